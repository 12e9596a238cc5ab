//! Microsoft's Python device SDK (`azure-iot-device`, pinned in `tests/sdk/requirements.txt`)
//! against the emulator: the proof that the emulator behaves closely enough to IoT Hub for
//! Microsoft's own device SDKs to work with it.
//!
//! Each test starts an emulator in-process with TLS (a certificate made here by rcgen) and runs
//! `tests/sdk/device_twin.py`, a thin JSON-lines remote control over the unmodified SDK, as a
//! child process; the test sends it SDK calls (connect, `get_twin`, `patch_twin_reported_properties`,
//! …), reads the answers and the SDK's callbacks (connection state, desired patches) with a
//! deadline, and checks the hub's side (twin, `$version`s, counters).
//!
//! The SDK always dials port 8883 on the connection string's `GatewayHostName`, else its
//! `HostName` (no port can be given), so each test binds the emulator to a random loopback
//! address `127.x.y.z:8883` (Linux routes all of 127/8 to `lo`): tests run in parallel and do
//! not collide with a `hub-emulator` a developer runs on `127.0.0.1:8883`.
//!
//! Where the SDK comes from: `$TWINBRIDGE_SDK_PYTHON` (a Python with the SDK installed; `.ci/run`
//! builds the venv `target/sdk-venv` and exports it), else `target/sdk-venv/bin/python` if it
//! exists. Without either, the SDK tests FAIL when `$CI` is set (CI must run them) and are
//! otherwise skipped with a loud message on stderr. To set it up by hand:
//! `python3 -m venv target/sdk-venv && target/sdk-venv/bin/pip install -r hub-emulator/tests/sdk/requirements.txt`.
//!
//! The last test needs no SDK: it pins, with rumqttc, the MQTT session behaviour the SDK relies
//! on (subscriptions of a `clean_session = 0` session survive a reconnect).

mod common;

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DESIRED_FILTER, KEY_A, KEY_B, KEY_WRONG, RES_FILTER};
use hub_emulator::state::CloseReason;
use hub_emulator::{Config, Emulator, RunningEmulator, StartError};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

/// The remote-controlled SDK device.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/device_twin.py");
/// The pinned SDK and its dependencies.
const REQUIREMENTS: &str = include_str!("sdk/requirements.txt");
/// The SDK's MQTT port (hard-wired in `azure.iot.device.common.mqtt_transport`).
const SDK_MQTT_PORT: u16 = 8883;
/// Longest wait for any one answer or event from the SDK (it answers in milliseconds; the
/// margin is for slow CI machines and the SDK's one-second reconnect interval).
const SDK_DEADLINE: Duration = Duration::from_secs(20);
/// A DTDL model id: the SDK then sends the Plug and Play username (`model-id=…`).
const MODEL_ID: &str = "dtmi:twinbridge:sdkProbe;1";

// ----- finding the SDK ----------------------------------------------------------------------

/// Prints the skip notice once per test binary.
static SKIP_NOTICE: std::sync::Once = std::sync::Once::new();

/// The Python interpreter with the SDK, or `None` (after a loud message) to skip the test.
fn sdk_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TWINBRIDGE_SDK_PYTHON") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "TWINBRIDGE_SDK_PYTHON={} does not exist",
            p.display()
        );
        return Some(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sdk-venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !in_ci,
        "CI is set but the Python device SDK is not installed: set TWINBRIDGE_SDK_PYTHON \
         (.ci/run builds target/sdk-venv and exports it)"
    );
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and a
    // skipped compatibility check must not go unnoticed. Once per test binary.
    SKIP_NOTICE.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\n#####  SKIPPED: Microsoft's Python device SDK is not installed, so the emulator is \
             NOT being checked against it.\n#####  Set TWINBRIDGE_SDK_PYTHON or run: python3 -m \
             venv target/sdk-venv && target/sdk-venv/bin/pip install -r \
             hub-emulator/tests/sdk/requirements.txt\n"
        );
    });
    None
}

/// The SDK version pinned in `requirements.txt`.
fn pinned_sdk_version() -> &'static str {
    REQUIREMENTS
        .lines()
        .find_map(|l| l.trim().strip_prefix("azure-iot-device=="))
        .expect("requirements.txt pins azure-iot-device")
}

// ----- the emulator on <random loopback address>:8883 ---------------------------------------

/// An emulator with TLS on `ip:8883`, devices `d1`/`d2` (primary `KEY_A`, secondary `KEY_B`).
struct SdkHub {
    emu: RunningEmulator,
    ip: Ipv4Addr,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl SdkHub {
    /// Starts the emulator; its hub host name is `hostname`, or the address itself.
    async fn start(hostname: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..16 {
            let [x, y, z] = rand::random::<[u8; 3]>().map(|b| b.clamp(1, 254));
            let ip = Ipv4Addr::new(127, x, y, z);
            let names = vec!["localhost".to_owned(), ip.to_string()];
            let ck = rcgen::generate_simple_self_signed(names).expect("rcgen makes a certificate");
            let key =
                rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
            let tls = hub_emulator::tls::server_config(vec![ck.cert.der().clone()], key)
                .expect("TLS server config");
            let mut config: Config = common::config();
            config.hostname = hostname.map_or_else(|| ip.to_string(), str::to_owned);
            config.mqtt_bind = SocketAddr::from((ip, SDK_MQTT_PORT));
            config.tls = Some(tls);
            match Emulator::start(config).await {
                Ok(emu) => {
                    let ca_file = dir.path().join("hub-ca.pem");
                    std::fs::write(&ca_file, ck.cert.pem()).expect("write CA file");
                    return Self {
                        emu,
                        ip,
                        ca_file,
                        _dir: dir,
                    };
                }
                // Another test (or run) holds this address: draw another.
                Err(StartError::Bind { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse => {}
                Err(e) => panic!("emulator on {ip}:{SDK_MQTT_PORT}: {e}"),
            }
        }
        panic!("no free loopback address for port {SDK_MQTT_PORT} after 16 draws");
    }

    /// A device connection string; `gateway` adds `GatewayHostName=<the address>`.
    fn connection_string(&self, device_id: &str, key: &str, gateway: bool) -> String {
        let gateway = if gateway {
            format!(";GatewayHostName={}", self.ip)
        } else {
            String::new()
        };
        format!(
            "HostName={};DeviceId={device_id};SharedAccessKey={key}{gateway}",
            self.emu.hostname()
        )
    }

    fn create_args(&self, device_id: &str, key: &str, options: &Value) -> Value {
        json!({
            "connection_string": self.connection_string(device_id, key, false),
            "ca_file": self.ca_file,
            "options": options,
        })
    }

    /// The device's `properties.reported` / `properties.desired` as the service API shows them.
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

/// `tests/sdk/device_twin.py` running under the SDK's Python (killed when dropped).
struct SdkDevice {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Lines read while waiting for something else.
    backlog: VecDeque<Value>,
    stderr: Arc<Mutex<String>>,
}

impl SdkDevice {
    async fn spawn(python: &Path) -> Self {
        let mut child = Command::new(python)
            .arg(SCRIPT)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} {SCRIPT}: {e}", python.display()));
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
        let version = hello["sdk_version"].as_str().unwrap_or_default();
        eprintln!("azure-iot-device {version}");
        assert_eq!(
            version,
            pinned_sdk_version(),
            "the SDK in {} is not the version pinned in tests/sdk/requirements.txt",
            python.display()
        );
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

    /// Sends `{"op": op, ...args}` and returns its reply (`ok` true or false). Events that
    /// arrive meanwhile are kept for [`SdkDevice::event`].
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

    /// [`SdkDevice::call`] that must succeed; returns the reply.
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

    /// The first event named `name` that satisfies `pred` (earlier non-matching lines stay in
    /// the backlog).
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

    /// Waits for the SDK's connection-state callback to report `connected`.
    async fn connection(&mut self, connected: bool) {
        self.event("connection", |e| e["connected"] == connected)
            .await;
    }

    /// The next desired patch the SDK delivered whose `$version` is `version`.
    async fn desired(&mut self, version: u64) -> Value {
        self.event("desired", |e| e["patch"]["$version"] == version)
            .await["patch"]
            .clone()
    }

    /// Asks the script to shut the client down and waits for it to exit.
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

/// Polls `cond` on the hub until it holds, within the SDK deadline.
async fn until(what: &str, cond: impl FnMut() -> bool) {
    common::eventually_within(SDK_DEADLINE, what, cond).await;
}

// ----- the SDK scenarios --------------------------------------------------------------------

/// Connect (Plug and Play username), GET, reported PATCH, a desired patch from the service
/// API reaching the SDK's handler, a PnP acknowledgement, a `null` delete, a 400 for a bad
/// key, telemetry, and exactly that traffic on the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_twin_get_reported_patch_and_desired_ack() {
    let Some(python) = sdk_python() else { return };
    let hub = SdkHub::start(None).await;
    let mut dev = SdkDevice::spawn(&python).await;
    let options = json!({"connection_retry": false, "product_info": MODEL_ID, "keep_alive": 30});
    dev.ok("create", hub.create_args("d1", KEY_A, &options))
        .await;
    dev.ok("connect", json!({})).await;
    dev.connection(true).await;
    assert!(hub.emu.hub().is_connected("d1"));
    dev.ok("enable_desired", json!({})).await;

    let twin = dev.ok("get_twin", json!({})).await["twin"].clone();
    assert_eq!(
        twin,
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
    );

    let reported =
        json!({"firmware": "1.2.3", "temperature": 21.5, "limits": {"min": -20, "max": 85}});
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
    let patch = dev.desired(2).await;
    assert_eq!(patch, json!({"$version": 2, "setpoint": 21}));

    // The device acknowledges it the IoT Plug and Play way.
    let ack = json!({"setpoint": {"value": 21, "ac": 200, "av": 2, "ad": "applied"}});
    dev.ok("patch_reported", json!({ "patch": ack })).await;
    let section = hub.section("d1", "reported");
    assert_eq!(section["setpoint"], ack["setpoint"]);
    assert_eq!(section["$version"], 3);
    assert_eq!(hub.section("d1", "desired")["$version"], 2);

    // `null` deletes a reported property.
    dev.ok("patch_reported", json!({"patch": {"temperature": null}}))
        .await;
    let section = hub.section("d1", "reported");
    assert!(section.get("temperature").is_none(), "{section}");
    assert_eq!(section["$version"], 4);

    // A patch that breaks the twin rules (a space in a key) is answered 400, which the SDK
    // raises as `ClientError` caused by `ServiceError("twin operation returned status 400")`;
    // the twin is unchanged.
    let reply = dev
        .call("patch_reported", json!({"patch": {"bad key": 1}}))
        .await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"], "ClientError", "{reply}");
    assert!(
        reply["cause"]
            .as_str()
            .is_some_and(|c| c.starts_with("ServiceError") && c.contains("status 400")),
        "{reply}"
    );
    assert_eq!(hub.section("d1", "reported")["$version"], 4);

    // Telemetry is accepted (PUBACK) and counted.
    dev.ok(
        "send_message",
        json!({"data": "{\"temperature\": 21.5}", "properties": {"kind": "probe"}}),
    )
    .await;

    // The SDK's view equals the hub's.
    let twin = dev.ok("get_twin", json!({})).await["twin"].clone();
    let mut expected = reported.clone();
    expected["setpoint"] = ack["setpoint"].clone();
    expected["$version"] = 4.into();
    expected
        .as_object_mut()
        .expect("an object")
        .remove("temperature");
    assert_eq!(
        twin,
        json!({"desired": {"$version": 2, "setpoint": 21}, "reported": expected})
    );

    dev.ok("disconnect", json!({})).await;
    dev.connection(false).await;
    until("hub sees d1 disconnected", || {
        !hub.emu.hub().is_connected("d1")
    })
    .await;
    assert!(dev.exit().await.success());

    // Exactly the traffic the calls above imply: the SDK adds no requests of its own.
    let c = hub.emu.hub().counters.snapshot();
    assert_eq!(
        (c.connects, c.connects_refused, c.disconnects_by_hub),
        (1, 0, 0)
    );
    assert_eq!((c.twin_gets, c.reported_patches), (2, 4));
    assert_eq!(c.desired_notifications, 1);
    assert_eq!((c.responses_2xx, c.responses_4xx), (5, 1));
    assert_eq!(c.telemetry, 1);
}

/// The hub drops the connection and refuses the SDK's first reconnects; a desired change
/// made meanwhile reaches the device after it reconnects on its own. The Python SDK never
/// subscribes again after a reconnect (it connects with `clean_session = 0` and counts on the
/// hub keeping its subscriptions, as IoT Hub does), so twin responses and desired patches
/// after the reconnect prove the emulator resumed the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_reconnects_after_a_drop_and_its_session_survives() {
    let Some(python) = sdk_python() else { return };
    let hub = SdkHub::start(None).await;
    let mut dev = SdkDevice::spawn(&python).await;
    let options = json!({"connection_retry": true, "connection_retry_interval": 1});
    dev.ok("create", hub.create_args("d1", KEY_A, &options))
        .await;
    dev.ok("connect", json!({})).await;
    dev.connection(true).await;
    dev.ok("enable_desired", json!({})).await;
    dev.ok("get_twin", json!({})).await;

    let state = hub.emu.hub();
    state.set_faults(|f| f.refuse_until = Some(Instant::now() + Duration::from_mins(2)));
    assert_eq!(state.drop_connections(Some("d1"), CloseReason::Dropped), 1);
    dev.connection(false).await;
    until("the SDK retried and was refused", || {
        state.counters.snapshot().connects_refused >= 1
    })
    .await;

    // Changed while the device is offline: no notification can reach it.
    state
        .patch_twin(
            "d1",
            &json!({"properties": {"desired": {"setpoint": 22}}}),
            None,
        )
        .expect("desired patch");
    state.set_faults(|f| f.refuse_until = None);
    dev.connection(true).await;

    // On reconnect the SDK GETs the twin itself and hands the newer desired section to the
    // handler: needs the resumed `$iothub/twin/res/#` subscription.
    let patch = dev.desired(2).await;
    assert_eq!(patch, json!({"$version": 2, "setpoint": 22}));
    // A live notification: needs the resumed desired subscription.
    state
        .patch_twin(
            "d1",
            &json!({"properties": {"desired": {"setpoint": 23}}}),
            None,
        )
        .expect("desired patch");
    assert_eq!(dev.desired(3).await, json!({"$version": 3, "setpoint": 23}));
    let ack = json!({"setpoint": {"value": 23, "ac": 200, "av": 3, "ad": "applied"}});
    dev.ok("patch_reported", json!({ "patch": ack })).await;
    assert_eq!(hub.section("d1", "reported")["setpoint"], ack["setpoint"]);
    assert!(dev.exit().await.success());
    assert_eq!(state.counters.snapshot().connects, 2);
}

/// The SDK renews its SAS token before it expires (disconnect, connect with a new token,
/// same session); the hub never has to close the connection, and the session survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_renews_its_sas_token_and_keeps_its_session() {
    let Some(python) = sdk_python() else { return };
    let hub = SdkHub::start(None).await;
    let mut dev = SdkDevice::spawn(&python).await;
    // The SDK renews 120 s before expiry: a 122 s token is renewed after about 2 s.
    let options =
        json!({"connection_retry": true, "connection_retry_interval": 1, "sastoken_ttl": 122});
    dev.ok("create", hub.create_args("d1", KEY_A, &options))
        .await;
    dev.ok("connect", json!({})).await;
    dev.ok("enable_desired", json!({})).await;
    let state = hub.emu.hub();
    until("the SDK reconnected with a renewed token", || {
        state.counters.snapshot().connects >= 2 && state.is_connected("d1")
    })
    .await;
    state
        .patch_twin(
            "d1",
            &json!({"properties": {"desired": {"setpoint": 5}}}),
            None,
        )
        .expect("desired patch");
    assert_eq!(dev.desired(2).await, json!({"$version": 2, "setpoint": 5}));
    let twin = dev.ok("get_twin", json!({})).await["twin"].clone();
    assert_eq!(twin["desired"]["setpoint"], 5);
    assert!(dev.exit().await.success());
    let c = state.counters.snapshot();
    assert_eq!((c.connects_refused, c.disconnects_by_hub), (0, 0));
}

/// A wrong key gets CONNACK "not authorized", which the SDK reports as `CredentialError`; the
/// secondary key works. Here the hub's name is `localhost` and the SDK reaches it through
/// `GatewayHostName` (the SDK's transparent-gateway path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_wrong_key_is_refused_and_secondary_key_accepted() {
    let Some(python) = sdk_python() else { return };
    let hub = SdkHub::start(Some("localhost")).await;
    let mut dev = SdkDevice::spawn(&python).await;
    let create = |key: &str| {
        json!({
            "connection_string": hub.connection_string("d1", key, true),
            "ca_file": hub.ca_file,
            "options": {"connection_retry": false},
        })
    };
    dev.ok("create", create(KEY_WRONG)).await;
    let reply = dev.call("connect", json!({})).await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"], "CredentialError", "{reply}");
    let c = hub.emu.hub().counters.snapshot();
    assert_eq!((c.connects, c.connects_refused), (0, 1));
    assert!(!hub.emu.hub().is_connected("d1"));

    dev.ok("create", create(KEY_B)).await;
    dev.ok("connect", json!({})).await;
    assert!(hub.emu.hub().is_connected("d1"));
    let twin = dev.ok("get_twin", json!({})).await["twin"].clone();
    assert_eq!(twin["reported"]["$version"], 1);
    assert!(dev.exit().await.success());
    assert_eq!(hub.emu.hub().counters.snapshot().connects, 1);
}

/// A self-signed device certificate (PEM cert, PEM key) and its SHA-256 thumbprint, computed
/// here independently of the emulator.
fn device_cert(name: &str) -> (String, String, String) {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("rcgen certificate");
    let thumbprint =
        sha2::Sha256::digest(ck.cert.der())
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                write!(s, "{b:02X}").expect("writing to a String cannot fail");
                s
            });
    (ck.cert.pem(), ck.signing_key.serialize_pem(), thumbprint)
}

/// X.509 authentication with a self-signed device certificate registered by thumbprint
/// (`create_from_x509_certificate`: no SAS token, an empty password); a certificate with
/// another thumbprint is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_x509_device_authenticates_by_thumbprint() {
    let Some(python) = sdk_python() else { return };
    let hub = SdkHub::start(None).await;
    let (cert, key, thumbprint) = device_cert("x509-dev");
    let (other_cert, other_key, _) = device_cert("x509-dev");
    let mut identity = hub_emulator::state::DeviceIdentity::new(
        "x509-dev",
        hub_emulator::state::DeviceIdentity::random_key(),
        hub_emulator::state::DeviceIdentity::random_key(),
    );
    identity.thumbprint = Some(thumbprint);
    hub.emu
        .hub()
        .register_device(identity, None)
        .expect("register the X.509 device");
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    let create = |cert_file: PathBuf, key_file: PathBuf| {
        json!({
            "hostname": hub.emu.hostname(),
            "device_id": "x509-dev",
            "cert_file": cert_file,
            "key_file": key_file,
            "ca_file": hub.ca_file,
            "options": {"connection_retry": false},
        })
    };

    let mut dev = SdkDevice::spawn(&python).await;
    dev.ok(
        "create_x509",
        create(
            write("other.pem", &other_cert),
            write("other.key", &other_key),
        ),
    )
    .await;
    let reply = dev.call("connect", json!({})).await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"], "CredentialError", "{reply}");
    assert!(!hub.emu.hub().is_connected("x509-dev"));

    dev.ok(
        "create_x509",
        create(write("dev.pem", &cert), write("dev.key", &key)),
    )
    .await;
    dev.ok("connect", json!({})).await;
    assert!(hub.emu.hub().is_connected("x509-dev"));
    dev.ok("patch_reported", json!({"patch": {"auth": "x509"}}))
        .await;
    assert_eq!(hub.section("x509-dev", "reported")["auth"], "x509");
    assert!(dev.exit().await.success());
    let c = hub.emu.hub().counters.snapshot();
    assert_eq!((c.connects, c.connects_refused), (1, 1));
}

// ----- the session behaviour the SDK relies on, without the SDK -----------------------------

/// A rumqttc connection driven in place: returns the CONNACK's `session_present`.
async fn raw_connect(emu: &RunningEmulator, clean: bool) -> (AsyncClient, EventLoop, bool) {
    let token = emu.device_token("d1", 600).expect("registered");
    let mut o = MqttOptions::new("d1", "127.0.0.1", emu.mqtt_addr().port());
    o.set_credentials(emu.username("d1"), token);
    o.set_clean_session(clean);
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    let session_present = match next_packet(&mut eventloop).await {
        Packet::ConnAck(ack) => ack.session_present,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    (client, eventloop, session_present)
}

/// The next incoming packet (polling also sends what the client queued).
async fn next_packet(eventloop: &mut EventLoop) -> Packet {
    loop {
        match tokio::time::timeout(common::DEADLINE, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(p))) => return p,
            Ok(Ok(Event::Outgoing(_))) => {}
            Ok(Err(e)) => panic!("connection error: {e}"),
            Err(tokio::time::error::Elapsed { .. }) => {
                panic!("no packet within {:?}", common::DEADLINE)
            }
        }
    }
}

/// Sends a twin GET with `rid` and returns the topic of the next twin response.
async fn get_twin_topic(client: &AsyncClient, eventloop: &mut EventLoop, rid: &str) -> String {
    common::publish_twin_get(client, rid).await;
    loop {
        if let Packet::Publish(p) = next_packet(eventloop).await {
            return p.topic;
        }
    }
}

async fn close(client: AsyncClient, mut eventloop: EventLoop, emu: &RunningEmulator) {
    client.disconnect().await.expect("queue DISCONNECT");
    tokio::time::timeout(common::DEADLINE, async {
        while eventloop.poll().await.is_ok() {}
    })
    .await
    .expect("the hub closes the connection after DISCONNECT");
    let hub = emu.hub().clone();
    until("hub sees d1 disconnected", move || !hub.is_connected("d1")).await;
}

/// `clean_session = 0`: the subscriptions survive a reconnect (CONNACK "session present"),
/// so twin responses and desired notifications flow without a new SUBSCRIBE; a clean session
/// discards them.
#[tokio::test]
async fn persistent_session_keeps_subscriptions_across_connections() {
    let emu = common::start(|_| {}).await;
    let (client, mut el, present) = raw_connect(&emu, false).await;
    assert!(!present, "no session exists yet");
    client
        .subscribe_many(
            [RES_FILTER, DESIRED_FILTER]
                .map(|f| rumqttc::SubscribeFilter::new(f.to_owned(), QoS::AtLeastOnce)),
        )
        .await
        .expect("queue SUBSCRIBE");
    assert!(matches!(next_packet(&mut el).await, Packet::SubAck(_)));
    close(client, el, &emu).await;

    // Resumed: no SUBSCRIBE, yet responses and notifications arrive.
    let (client, mut el, present) = raw_connect(&emu, false).await;
    assert!(present, "the persistent session is resumed");
    assert_eq!(
        get_twin_topic(&client, &mut el, "1").await,
        "$iothub/twin/res/200/?$rid=1"
    );
    emu.hub()
        .patch_twin("d1", &json!({"properties": {"desired": {"x": 1}}}), None)
        .expect("desired patch");
    match next_packet(&mut el).await {
        Packet::Publish(p) => {
            assert_eq!(p.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
        }
        other => panic!("expected the desired notification, got {other:?}"),
    }
    close(client, el, &emu).await;

    // A clean session starts empty (the GET's response is dropped: not subscribed) ...
    let (client, mut el, present) = raw_connect(&emu, true).await;
    assert!(!present);
    client
        .publish(
            "$iothub/twin/GET/?$rid=2",
            QoS::AtMostOnce,
            false,
            Vec::new(),
        )
        .await
        .expect("queue GET");
    client
        .subscribe(RES_FILTER, QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    assert!(matches!(next_packet(&mut el).await, Packet::SubAck(_)));
    // ... the first response is the one asked for after subscribing.
    assert_eq!(
        get_twin_topic(&client, &mut el, "3").await,
        "$iothub/twin/res/200/?$rid=3"
    );
    close(client, el, &emu).await;
    // ... and it discarded the persistent session.
    let (_client, _el, present) = raw_connect(&emu, false).await;
    assert!(!present, "a clean session discards the persistent one");
}
