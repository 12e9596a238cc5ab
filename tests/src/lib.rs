//! Shared helpers for twinbridge's end-to-end tests: a TLS hub emulator with a test CA and
//! known device keys, runtime specs pointing at it, a tiny HTTP CONNECT proxy, and
//! deadline-bounded waits.

pub mod site;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use device_protocols::backoff::BackoffConfig;
use hub_emulator::state::DeviceIdentity;
use hub_emulator::{Config, Emulator, RunningEmulator};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use twinbridge::hub::{Credential, LinkSettings, Pacing, RateLimiter, Secret};
use twinbridge::service::{IdentitySpec, RuntimeSpec};
use twinbridge::store::StoreOptions;

/// The `twinbridge` binary of this build (`target/<profile>/twinbridge`).
///
/// Cargo builds it for `cargo test --workspace` (the agent crate has integration tests); a
/// run of this crate alone needs `cargo build -p twinbridge` first.
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/twinbridge
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let binary = profile_dir.join("twinbridge");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p twinbridge` (cargo test --workspace does)",
        binary.display()
    );
    binary
}

/// Spawns an agent process with its own `NOTIFY_SOCKET` and waits (with [`DEADLINE`]) for its
/// `sd_notify` `READY=1`: from then on its SIGTERM handler is installed and its runtime started.
pub async fn spawn_ready(command: std::process::Command) -> std::process::Child {
    spawn_notified(command).await.0
}

/// [`spawn_ready`], keeping the notify socket to watch the agent's later messages (reloads).
pub async fn spawn_notified(
    mut command: std::process::Command,
) -> (std::process::Child, NotifySocket) {
    let socket = NotifySocket::new();
    let child = command
        .env("NOTIFY_SOCKET", socket.path())
        .spawn()
        .expect("the agent starts");
    socket.wait_for("READY=1", |m| has_line(m, "READY=1")).await;
    (child, socket)
}

/// Whether the `sd_notify` message `message` has the line `line`.
pub fn has_line(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

/// A `$NOTIFY_SOCKET` for an agent under test: receives its `sd_notify` messages.
#[derive(Debug)]
pub struct NotifySocket {
    dir: tempfile::TempDir,
    socket: tokio::net::UnixDatagram,
}

impl NotifySocket {
    /// Binds a fresh socket in a temporary folder.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the notify socket");
        let socket =
            tokio::net::UnixDatagram::bind(dir.path().join("notify")).expect("notify socket binds");
        Self { dir, socket }
    }

    /// Where it is (the value of `NOTIFY_SOCKET`).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("notify")
    }

    /// Waits (with [`DEADLINE`]) for the next message for which `want` holds, and returns it;
    /// the messages before it are skipped.
    pub async fn wait_for(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let mut buf = vec![0u8; 4096];
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                let n = self
                    .socket
                    .recv(&mut buf)
                    .await
                    .expect("notify socket readable");
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if want(&message) {
                    return message;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("the agent sent no {what} within {DEADLINE:?}"))
    }
}

impl Default for NotifySocket {
    fn default() -> Self {
        Self::new()
    }
}

/// Sends SIGTERM to an agent process and waits (with [`DEADLINE`]) for it to exit; returns
/// its exit status.
pub async fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM sent");
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the agent") {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the agent did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `cond` holds, polling every 20 ms; panics with `what` after `deadline`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TLS hub emulator for `localhost` with a self-signed certificate (written as the CA file
/// the agent trusts), devices with known keys, and a state file so it can be restarted.
pub struct TestHub {
    emu: Option<RunningEmulator>,
    dir: tempfile::TempDir,
    keys: BTreeMap<String, String>,
    tls: Arc<rustls::ServerConfig>,
    tweak: fn(&mut Config),
}

impl std::fmt::Debug for TestHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHub")
            .field("dir", &self.dir.path())
            .field("devices", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TestHub {
    /// Starts a hub with `devices` registered (fresh random keys).
    pub async fn start(devices: &[&str]) -> Self {
        Self::start_with(devices, |_| {}).await
    }

    /// Starts a hub with `devices` registered and the emulator config changed by `tweak`
    /// (also applied on [`TestHub::restart`]).
    pub async fn start_with(devices: &[&str], tweak: fn(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("rcgen generates a certificate");
        std::fs::write(dir.path().join("ca.pem"), ck.cert.pem()).expect("CA file written");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let tls = hub_emulator::tls::server_config(vec![ck.cert.der().clone()], key)
            .expect("TLS server config");
        let keys = devices
            .iter()
            .map(|d| ((*d).to_owned(), DeviceIdentity::random_key()))
            .collect();
        let mut hub = Self {
            emu: None,
            dir,
            keys,
            tls,
            tweak,
        };
        hub.emu = Some(hub.launch(None).await.expect("emulator starts"));
        hub
    }

    /// Starts the emulator; `addrs` = (mqtt, service, control) to rebind after a restart.
    async fn launch(
        &self,
        addrs: Option<(SocketAddr, Option<SocketAddr>, Option<SocketAddr>)>,
    ) -> Result<RunningEmulator, hub_emulator::StartError> {
        let mut config = Config::ephemeral();
        config.hostname = "localhost".into();
        config.tls = Some(self.tls.clone());
        config.state_file = Some(self.dir.path().join("hub-state.json"));
        if let Some((mqtt, service, control)) = addrs {
            config.mqtt_bind = mqtt;
            config.service_bind = service;
            config.control_bind = control;
        }
        for (id, key) in &self.keys {
            config
                .devices
                .push(DeviceIdentity::new(id.clone(), key.clone(), key.clone()));
        }
        (self.tweak)(&mut config);
        Emulator::start(config).await
    }

    /// The running emulator.
    pub fn emu(&self) -> &RunningEmulator {
        self.emu.as_ref().expect("the emulator is running")
    }

    /// Stops the emulator (its state is persisted) and starts it again on the same ports.
    pub async fn restart(&mut self) {
        let old = self.emu.take().expect("the emulator is running");
        let addrs = (old.mqtt_addr(), old.service_addr(), old.control_addr());
        old.shutdown().await;
        // The old listeners are closed; a port can take a moment to be bindable again.
        let mut last = None;
        for _ in 0..100 {
            match self.launch(Some(addrs)).await {
                Ok(emu) => {
                    self.emu = Some(emu);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("emulator did not restart on its ports: {last:?}");
    }

    /// The folder holding the CA file and the emulator's state (and whatever a test adds).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA file that makes the agent trust this emulator.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The symmetric key of `device`.
    pub fn key(&self, device: &str) -> &str {
        self.keys
            .get(device)
            .unwrap_or_else(|| panic!("{device} is not registered"))
    }

    /// Writes a keys file (`device = "key"` for every device, mode 0600) and returns its path.
    pub fn write_keys_file(&self) -> PathBuf {
        let path = self.dir.path().join("keys.toml");
        let mut body = String::new();
        for (id, key) in &self.keys {
            writeln!(body, "{id:?} = {key:?}").expect("writing to a String cannot fail");
        }
        std::fs::write(&path, body).expect("keys file written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("keys file mode set");
        path
    }

    /// The `[gateway]` and `[hub]` part of a `config.toml` for this emulator, as a technician
    /// writes it from the docs (keys file written, short timeouts and backoff for tests);
    /// `state_dir` as given (relative paths are relative to the config file's folder).
    pub fn config_head(&self, gateway: &str, state_dir: &str) -> String {
        format!(
            r#"[gateway]
id = "{gateway}"
state_dir = "{state_dir}"

[hub]
host = "localhost"
port = {port}
ca_file = "{ca}"
keys_file = "{keys}"
request_timeout = "3s"

[hub.backoff]
initial = "50ms"
max = "500ms"
"#,
            port = self.emu().mqtt_addr().port(),
            ca = self.ca_file().display(),
            keys = self.write_keys_file().display(),
        )
    }

    /// Link settings for this emulator over MQTT/TLS, with short timeouts for tests.
    pub fn link_settings(&self) -> LinkSettings {
        let mut link = LinkSettings::new("localhost");
        link.port = Some(self.emu().mqtt_addr().port());
        link.ca_file = Some(self.ca_file());
        link.request_timeout = Duration::from_secs(5);
        link.keep_alive = Duration::from_secs(30);
        link.backoff = BackoffConfig::new(Duration::from_millis(50), Duration::from_millis(500));
        link
    }

    /// The hub's reported document of `device` (without `$version`/`$metadata`) and its
    /// `$version`.
    pub fn reported(&self, device: &str) -> (Value, i64) {
        let twin = self
            .emu()
            .hub()
            .twin_json(device)
            .expect("device registered");
        let mut reported = twin["properties"]["reported"].clone();
        let version = reported["$version"].as_i64().expect("reported $version");
        if let Value::Object(map) = &mut reported {
            map.remove("$version");
            map.remove("$metadata");
        }
        (reported, version)
    }

    /// Sets desired properties through the service API; returns the new desired `$version`.
    pub fn set_desired(&self, device: &str, patch: &Value) -> i64 {
        let twin = self
            .emu()
            .hub()
            .patch_twin(device, &json!({"properties": {"desired": patch}}), None)
            .expect("desired patch accepted");
        twin["properties"]["desired"]["$version"]
            .as_i64()
            .expect("desired $version")
    }

    /// Refuses (or stops refusing) every CONNECT, and drops the live connections.
    pub fn outage(&self, on: bool) {
        let hub = self.emu().hub();
        hub.set_faults(|f| {
            f.refuse_until = on.then(|| tokio::time::Instant::now() + Duration::from_hours(1));
        });
        if on {
            hub.drop_connections(None, hub_emulator::state::CloseReason::Dropped);
        }
    }

    /// The emulator's traffic counters.
    pub fn counters(&self) -> hub_emulator::state::CounterSnapshot {
        self.emu().hub().counters.snapshot()
    }
}

/// A runtime spec for `gateway` + `devices` on `hub`, with the store at `store_path`, fast
/// retries and a fast gateway summary. Pacing is generous unless a test changes it.
pub fn runtime_spec(
    hub: &TestHub,
    store_path: &Path,
    gateway: &str,
    devices: &[&str],
) -> RuntimeSpec {
    let identity = |id: &str| IdentitySpec {
        id: id.to_owned(),
        credential: Credential::SymmetricKey(Secret::new(hub.key(id))),
        history: None,
    };
    RuntimeSpec {
        store_path: store_path.to_owned(),
        store_options: StoreOptions::default(),
        link: hub.link_settings(),
        pacing: Pacing {
            connects: RateLimiter::new(200.0, 50),
            gets: RateLimiter::new(200.0, 50),
            updates: RateLimiter::new(200.0, 50),
        },
        gateway: identity(gateway),
        devices: devices.iter().map(|d| identity(d)).collect(),
        buses: Vec::new(),
        lines: Vec::new(),
        retry: BackoffConfig::new(Duration::from_millis(50), Duration::from_millis(500)),
        summary_every: Duration::from_millis(200),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// A minimal HTTP CONNECT proxy on loopback: answers `200` to `CONNECT host:port`, then
/// copies bytes both ways. Counts the tunnels it opened.
#[derive(Debug)]
pub struct ConnectProxy {
    addr: SocketAddr,
    tunnels: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectProxy {
    /// Starts the proxy on an ephemeral loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let tunnels = Arc::new(AtomicU64::new(0));
        let counter = tunnels.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(tunnel(client, counter.clone()));
            }
        });
        Self {
            addr,
            tunnels,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Tunnels opened so far.
    pub fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::SeqCst)
    }
}

async fn tunnel(client: TcpStream, tunnels: Arc<AtomicU64>) {
    let mut client = BufReader::new(client);
    let mut request = String::new();
    if client.read_line(&mut request).await.is_err() {
        return;
    }
    // Skip the headers up to the blank line.
    loop {
        let mut line = String::new();
        match client.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let ["CONNECT", target, _] = request.split_whitespace().collect::<Vec<_>>()[..] else {
        let _ = client
            .get_mut()
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await;
        return;
    };
    let target = target.to_owned();
    // The hub's host name is `localhost`; dial it on loopback.
    let Ok(mut upstream) = TcpStream::connect(target.replace("localhost", "127.0.0.1")).await
    else {
        let _ = client
            .get_mut()
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            .await;
        return;
    };
    if client
        .get_mut()
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    tunnels.fetch_add(1, Ordering::SeqCst);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
