//! Microsoft's Node device SDK (`azure-iot-device` + `azure-iot-device-mqtt`, pinned in
//! `tests/sdk-node/package.json` and `package-lock.json`) against the emulator, as
//! `sdk_python.rs` does with the Python SDK.
//!
//! Each test starts an emulator in-process with TLS (a certificate made here by rcgen for
//! `localhost` and the listening address) and runs `tests/sdk-node/device_twin.js`, a thin
//! JSON-lines remote control over the unmodified SDK, under `node` with the emulator's
//! certificate in `NODE_EXTRA_CA_CERTS`. The hub's host name is `localhost` (the connection
//! string's `HostName`, which the SAS token and username name); the SDK dials
//! `mqtts://{GatewayHostName}:8883`, so each test binds the emulator to a random loopback
//! address `127.x.y.z:8883` and names it as the gateway: tests run in parallel with each other,
//! with the Python SDK tests and with a `hub-emulator` a developer runs on `127.0.0.1:8883`.
//!
//! `node_sdk_over_websocket` uses the SDK's MQTT-over-WebSocket transport, which dials port 443
//! (fixed): it runs where the process may bind it (root, as in CI) and is skipped with a notice
//! elsewhere.
//!
//! The Node SDK decides a twin request's success from the response body alone (an error when
//! it has an `errorCode`), so these tests are also what pins the error answers' IoT Hub shape.
//!
//! Where the SDK comes from: `$TWINBRIDGE_SDK_NODE` (a directory with `node_modules` holding
//! the pinned packages; `.ci/run` installs `target/sdk-node` with `npm ci` and exports it),
//! else `target/sdk-node` if it exists. Without either, the tests FAIL when `$CI` is set and
//! are otherwise skipped with a loud message on stderr. To set it up by hand:
//! `mkdir -p target/sdk-node && cp hub-emulator/tests/sdk-node/package*.json target/sdk-node/
//! && (cd target/sdk-node && npm ci)`.

mod common;

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::KEY_A;
use hub_emulator::{Config, Emulator, RunningEmulator, StartError};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

/// The remote-controlled SDK device.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk-node/device_twin.js");
/// The pinned SDK packages.
const PACKAGE_JSON: &str = include_str!("sdk-node/package.json");
/// The SDK's MQTT port (`mqtts://host` without a port).
const SDK_MQTT_PORT: u16 = 8883;
/// The SDK's MQTT-over-WebSocket port (hard-wired in `MqttWs`; binding it needs root or
/// `CAP_NET_BIND_SERVICE`).
const SDK_WS_PORT: u16 = 443;
/// The hub host name the SDK is given.
const HUB_HOST: &str = "localhost";
/// Longest wait for any one answer or event from the SDK.
const SDK_DEADLINE: Duration = Duration::from_secs(20);

// ----- finding the SDK ----------------------------------------------------------------------

/// Prints the skip notice once per test binary.
static SKIP_NOTICE: std::sync::Once = std::sync::Once::new();

/// The directory whose `node_modules` holds the SDK, or `None` (after a loud message) to skip.
fn sdk_node() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TWINBRIDGE_SDK_NODE") {
        let p = PathBuf::from(p);
        assert!(
            p.join("node_modules/azure-iot-device-mqtt").exists(),
            "TWINBRIDGE_SDK_NODE={} has no node_modules/azure-iot-device-mqtt",
            p.display()
        );
        return Some(p);
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sdk-node");
    if installed
        .join("node_modules/azure-iot-device-mqtt")
        .exists()
    {
        return Some(installed);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !in_ci,
        "CI is set but the Node device SDK is not installed: set TWINBRIDGE_SDK_NODE \
         (.ci/run installs target/sdk-node and exports it)"
    );
    SKIP_NOTICE.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\n#####  SKIPPED: Microsoft's Node device SDK is not installed, so the emulator is \
             NOT being checked against it.\n#####  Set TWINBRIDGE_SDK_NODE or run: mkdir -p \
             target/sdk-node && cp hub-emulator/tests/sdk-node/package*.json target/sdk-node/ \
             && (cd target/sdk-node && npm ci)\n"
        );
    });
    None
}

/// The version `package.json` pins for `package`.
fn pinned(package: &str) -> String {
    let manifest: Value = serde_json::from_str(PACKAGE_JSON).expect("package.json is JSON");
    manifest["dependencies"][package]
        .as_str()
        .unwrap_or_else(|| panic!("package.json pins {package}"))
        .to_owned()
}

// ----- the emulator on <random loopback address>:8883 ---------------------------------------

/// Prints the notice about the skipped WebSocket test once per test binary.
static WS_SKIP_NOTICE: std::sync::Once = std::sync::Once::new();

/// An emulator with TLS on `ip:8883` (or, when asked, WebSocket on `ip:443` and MQTT on
/// another port), host name `localhost`, devices `d1`/`d2`.
struct SdkHub {
    emu: RunningEmulator,
    ip: Ipv4Addr,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl SdkHub {
    async fn start() -> Self {
        Self::start_with(false)
            .await
            .expect("no privileged port without WebSocket")
    }

    /// With the WebSocket listener on port 443 too; `None` (after a notice) when this process
    /// may not bind port 443.
    async fn start_with_websocket() -> Option<Self> {
        let hub = Self::start_with(true).await;
        if hub.is_none() {
            WS_SKIP_NOTICE.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "\n#####  SKIPPED: binding port {SDK_WS_PORT} is not permitted (not root, no \
                     CAP_NET_BIND_SERVICE), so the Node SDK's MQTT over WebSocket is NOT being \
                     checked against the emulator.\n"
                );
            });
        }
        hub
    }

    async fn start_with(websocket: bool) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..16 {
            let [x, y, z] = rand::random::<[u8; 3]>().map(|b| b.clamp(1, 254));
            let ip = Ipv4Addr::new(127, x, y, z);
            let names = vec![HUB_HOST.to_owned(), ip.to_string()];
            let ck = rcgen::generate_simple_self_signed(names).expect("rcgen makes a certificate");
            let key =
                rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
            let tls = hub_emulator::tls::server_config(vec![ck.cert.der().clone()], key)
                .expect("TLS server config");
            let mut config: Config = common::config();
            HUB_HOST.clone_into(&mut config.hostname);
            config.mqtt_bind = SocketAddr::from((ip, SDK_MQTT_PORT));
            config.tls = Some(tls);
            if websocket {
                // Only the WebSocket listener at the SDK's address: a connection proves it.
                config.ws_bind = Some(SocketAddr::from((ip, SDK_WS_PORT)));
                config.mqtt_bind = SocketAddr::from((ip, 0));
            }
            match Emulator::start(config).await {
                Ok(emu) => {
                    let ca_file = dir.path().join("hub-ca.pem");
                    std::fs::write(&ca_file, ck.cert.pem()).expect("write CA file");
                    return Some(Self {
                        emu,
                        ip,
                        ca_file,
                        _dir: dir,
                    });
                }
                // Another test (or run) holds this address: draw another.
                Err(StartError::Bind { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse => {}
                Err(StartError::Bind { source, .. })
                    if websocket && source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    return None;
                }
                Err(e) => panic!("emulator on {ip}:{SDK_MQTT_PORT}: {e}"),
            }
        }
        panic!("no free loopback address for port {SDK_MQTT_PORT} after 16 draws");
    }

    /// The device's connection string: hub `localhost`, reached at this test's address.
    fn connection_string(&self, device_id: &str, key: &str) -> String {
        format!(
            "HostName={HUB_HOST};DeviceId={device_id};SharedAccessKey={key};GatewayHostName={}",
            self.ip
        )
    }

    /// The device's `properties.{section}` as the service API shows it.
    fn section(&self, device_id: &str, section: &str) -> Value {
        self.emu.hub().twin_json(device_id).expect("registered")["properties"][section].clone()
    }
}

/// `doc` without its `$`-keys (`$version`, `$metadata`).
fn user_props(doc: &Value) -> Value {
    let map = doc.as_object().expect("a twin section is an object");
    Value::Object(
        map.iter()
            .filter(|(k, _)| !k.starts_with('$'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

// ----- the remote-controlled SDK device -----------------------------------------------------

/// `tests/sdk-node/device_twin.js` running under `node` (killed when dropped).
struct NodeDevice {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Lines read while waiting for something else.
    backlog: VecDeque<Value>,
    stderr: Arc<Mutex<String>>,
}

impl NodeDevice {
    async fn spawn(sdk: &Path, hub: &SdkHub) -> Self {
        let mut child = Command::new("node")
            .arg(SCRIPT)
            .env("NODE_PATH", sdk.join("node_modules"))
            .env("NODE_EXTRA_CA_CERTS", &hub.ca_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting node {SCRIPT}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            while let Ok(n @ 1..) = err_pipe.read(&mut buf).await {
                sink.lock()
                    .expect("stderr sink")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut dev = Self {
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().expect("stdout piped")).lines(),
            child,
            backlog: VecDeque::new(),
            stderr,
        };
        let hello = dev.event("hello", |_| true).await;
        eprintln!(
            "azure-iot-device {} azure-iot-device-mqtt {}",
            hello["sdk_version"], hello["mqtt_version"]
        );
        for (field, package) in [
            ("sdk_version", "azure-iot-device"),
            ("mqtt_version", "azure-iot-device-mqtt"),
        ] {
            assert_eq!(
                hello[field].as_str(),
                Some(pinned(package).as_str()),
                "the {package} in {} is not the version pinned in tests/sdk-node/package.json",
                sdk.display()
            );
        }
        dev
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr sink").clone()
    }

    /// The next line from the script, within the deadline.
    async fn read_line(&mut self, deadline: Instant, waiting_for: &str) -> Value {
        match tokio::time::timeout_at(deadline, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("SDK script printed a non-JSON line {line:?}: {e}")),
            Ok(Ok(None)) => panic!(
                "SDK script exited while waiting for {waiting_for}; stderr:\n{}",
                self.stderr()
            ),
            Ok(Err(e)) => panic!("reading the SDK script's stdout: {e}"),
            Err(tokio::time::error::Elapsed { .. }) => panic!(
                "no {waiting_for} from the SDK within {SDK_DEADLINE:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Sends `{"op": op, ...args}` and returns its reply. Events that arrive meanwhile are
    /// kept for [`NodeDevice::event`].
    async fn call(&mut self, op: &str, args: Value) -> Value {
        let mut command = args;
        command
            .as_object_mut()
            .expect("arguments are an object")
            .insert("op".into(), op.into());
        let stdin = self.stdin.as_mut().expect("stdin open until exit");
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write to the SDK script");
        stdin.flush().await.expect("flush to the SDK script");
        let deadline = Instant::now() + SDK_DEADLINE;
        loop {
            let line = self.read_line(deadline, &format!("reply to {op}")).await;
            if line["reply"] == op {
                return line;
            }
            self.backlog.push_back(line);
        }
    }

    /// [`NodeDevice::call`] that must succeed; returns the reply.
    async fn ok(&mut self, op: &str, args: Value) -> Value {
        let reply = self.call(op, args).await;
        assert_eq!(
            reply["ok"],
            true,
            "SDK call {op} failed: {reply}; stderr:\n{}",
            self.stderr()
        );
        reply
    }

    /// A reported patch the SDK must report as failed; returns its error message.
    async fn rejected_patch(&mut self, patch: &Value) -> String {
        let reply = self.call("patch_reported", json!({ "patch": patch })).await;
        assert_eq!(
            reply["ok"], false,
            "the SDK took a patch the hub refused for a success: {reply}"
        );
        reply["detail"].as_str().unwrap_or_default().to_owned()
    }

    /// The first event named `name` that satisfies `pred`.
    async fn event(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let matches = |l: &Value| l["event"] == name && pred(l);
        if let Some(i) = self.backlog.iter().position(matches) {
            return self.backlog.remove(i).expect("index from position");
        }
        let deadline = Instant::now() + SDK_DEADLINE;
        loop {
            let line = self.read_line(deadline, &format!("event {name}")).await;
            if matches(&line) {
                return line;
            }
            self.backlog.push_back(line);
        }
    }

    /// Asks the script to close the client and waits for it to exit.
    async fn exit(mut self) -> ExitStatus {
        let mut stdin = self.stdin.take().expect("stdin open until exit");
        stdin
            .write_all(b"{\"op\": \"exit\"}\n")
            .await
            .expect("write exit");
        drop(stdin);
        self.event("bye", |_| true).await;
        tokio::time::timeout(SDK_DEADLINE, self.child.wait())
            .await
            .expect("SDK script exits after bye")
            .expect("wait for the SDK script")
    }
}

/// A patch whose deepest object is `levels` below the section (IoT Hub allows 10), under the
/// key `deep`.
fn deep(levels: usize) -> Value {
    (0..=levels).fold(json!(1), |v, i| json!({ format!("l{i}"): v }))
}

// ----- the SDK scenarios --------------------------------------------------------------------

/// Connect with a SAS connection string over MQTT/TLS, GET, reported PATCH, a desired patch set
/// through the service API reaching the SDK, and refused patches (depth 11, over 32 KB) that
/// the SDK must report as errors, with the twin unchanged and the connection still usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_twin_round_trip_and_rejected_patches() {
    let Some(sdk) = sdk_node() else { return };
    let hub = SdkHub::start().await;
    let mut dev = NodeDevice::spawn(&sdk, &hub).await;
    dev.ok(
        "open",
        json!({"connection_string": hub.connection_string("d1", KEY_A)}),
    )
    .await;
    assert!(hub.emu.hub().is_connected("d1"));
    assert_eq!(hub.emu.hub().counters.snapshot().connects, 1);

    let twin = dev.ok("get_twin", json!({})).await["twin"].clone();
    assert_eq!(twin["desired"]["$version"], 1, "{twin}");
    assert_eq!(twin["reported"]["$version"], 1, "{twin}");

    let reported = json!({"firmware": "1.2.3", "temperature": 21.5, "limits": {"min": -20}});
    dev.ok("patch_reported", json!({ "patch": reported })).await;
    let section = hub.section("d1", "reported");
    assert_eq!(user_props(&section), reported);
    assert_eq!(section["$version"], 2);

    // A back end sets a desired property through the service REST API.
    let (status, body) = common::http(
        hub.emu.service_addr().expect("service API started"),
        "PATCH",
        "/twins/d1",
        Some(&json!({"properties": {"desired": {"setpoint": 21}}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let desired = dev.event("desired", |e| e["patch"]["$version"] == 2).await;
    assert_eq!(desired["patch"]["setpoint"], 21, "{desired}");

    // Patches the hub refuses (400 depth, 413 size) are errors to the SDK, not successes;
    // depth 10 itself is fine.
    dev.ok("patch_reported", json!({ "patch": deep(10) })).await;
    let reported = hub.section("d1", "reported");
    assert_eq!(reported["$version"], 3);
    let detail = dev.rejected_patch(&deep(11)).await;
    assert!(detail.contains("deeper than 10"), "{detail}");
    let big: serde_json::Map<_, _> = (0..9)
        .map(|i| (format!("k{i}"), json!("x".repeat(4000))))
        .collect();
    let detail = dev.rejected_patch(&Value::Object(big)).await;
    assert!(detail.contains("32768"), "{detail}");
    assert_eq!(
        hub.section("d1", "reported"),
        reported,
        "refused patches changed nothing"
    );
    let counters = hub.emu.hub().counters.snapshot();
    assert_eq!(counters.responses_4xx, 2);

    // The connection carries on: a valid patch after the refusals succeeds.
    dev.ok("patch_reported", json!({"patch": {"temperature": 22}}))
        .await;
    assert_eq!(hub.section("d1", "reported")["$version"], 4);
    let twin = dev.ok("get_twin", json!({})).await["twin"].clone();
    assert_eq!(twin["reported"]["temperature"], 22, "{twin}");
    assert_eq!(twin["desired"]["setpoint"], 21, "{twin}");

    assert!(dev.exit().await.success());
    common::eventually("d1 disconnected", || !hub.emu.hub().is_connected("d1")).await;
}

/// The SDK's MQTT over WebSocket transport (`MqttWs`, `wss://…:443/$iothub/websocket`): GET,
/// reported PATCH, a desired patch and a refused patch, over the emulator's WebSocket listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_over_websocket() {
    let Some(sdk) = sdk_node() else { return };
    let Some(hub) = SdkHub::start_with_websocket().await else {
        return;
    };
    let mut dev = NodeDevice::spawn(&sdk, &hub).await;
    dev.ok(
        "open",
        json!({"connection_string": hub.connection_string("d2", KEY_A), "websocket": true}),
    )
    .await;
    assert!(hub.emu.hub().is_connected("d2"));

    let twin = dev.ok("get_twin", json!({})).await["twin"].clone();
    assert_eq!(twin["reported"]["$version"], 1, "{twin}");
    dev.ok("patch_reported", json!({"patch": {"over": "websocket"}}))
        .await;
    assert_eq!(hub.section("d2", "reported")["over"], "websocket");

    hub.emu
        .hub()
        .patch_twin(
            "d2",
            &json!({"properties": {"desired": {"mode": "eco"}}}),
            None,
        )
        .expect("desired patch applied");
    let desired = dev.event("desired", |e| e["patch"]["$version"] == 2).await;
    assert_eq!(desired["patch"]["mode"], "eco", "{desired}");

    let detail = dev.rejected_patch(&json!({"bad key": 1})).await;
    assert!(!detail.is_empty());
    assert_eq!(hub.section("d2", "reported")["$version"], 2);

    assert!(dev.exit().await.success());
    common::eventually("d2 disconnected", || !hub.emu.hub().is_connected("d2")).await;
}
