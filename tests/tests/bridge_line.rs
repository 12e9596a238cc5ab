//! Line devices end to end: an instrument printing JSON lines on a pseudo-terminal, the real
//! runtime, the hub emulator over TLS. Readings reach the hub twin under the property prefix
//! with link health; fields the hub would refuse are dropped; a silent or unplugged instrument
//! shows offline; desired values are sent as rendered command lines and acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use device_protocols::backoff::BackoffConfig;
use device_protocols::line::{LineDeviceConfig, LineSettings, Template};
use device_protocols::pty::VirtualPort;
use device_protocols::serial::SerialSettings;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use twinbridge::bridge::LineSpec;
use twinbridge::service::Runtime;
use twinbridge::store::{Store, StoreOptions};
use twinbridge_e2e::{DEADLINE, TestHub, eventually, runtime_spec};

/// How often the instrument prints its reading.
const PRINT_EVERY: Duration = Duration::from_millis(100);

/// A serial instrument on a pluggable pty: prints its current reading line every
/// [`PRINT_EVERY`] (nothing while silent) and collects the command lines it receives.
#[derive(Debug)]
struct Instrument {
    port: VirtualPort,
    reading: Arc<Mutex<Option<String>>>,
    printed: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
    commands: mpsc::UnboundedReceiver<Vec<u8>>,
    commands_tx: mpsc::UnboundedSender<Vec<u8>>,
}

impl Instrument {
    fn plug_in(path: std::path::PathBuf) -> Self {
        let port = VirtualPort::new(path).expect("pty opens");
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let mut instrument = Self {
            port,
            reading: Arc::new(Mutex::new(None)),
            printed: Arc::new(AtomicU64::new(0)),
            tasks: Vec::new(),
            commands,
            commands_tx,
        };
        instrument.start();
        instrument
    }

    fn start(&mut self) {
        let master = self.port.take_master().expect("plugged in");
        let (read, mut write) = tokio::io::split(master);
        let reading = self.reading.clone();
        let printed = self.printed.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRINT_EVERY);
            loop {
                tick.tick().await;
                let line = reading.lock().expect("not poisoned").clone();
                if let Some(line) = line {
                    if write.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                    printed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
        let commands = self.commands_tx.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut read = BufReader::new(read);
            loop {
                let mut line = Vec::new();
                match read.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let _ = commands.send(line);
                    }
                }
            }
        }));
    }

    /// Prints `reading` (a JSON object) from now on, as one line ending in `\r\n`.
    fn print(&self, reading: &Value) {
        *self.reading.lock().expect("not poisoned") = Some(format!("{reading}\r\n"));
    }

    /// Stops printing.
    fn go_silent(&self) {
        *self.reading.lock().expect("not poisoned") = None;
    }

    /// Lines printed so far.
    fn printed(&self) -> u64 {
        self.printed.load(Ordering::SeqCst)
    }

    /// Closes the pty (the gateway's reads fail) and removes its path.
    async fn unplug(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.port.unplug().expect("unplugged");
    }

    /// A new pty behind the same path.
    fn replug(&mut self) {
        self.port.replug().expect("replugged");
        self.start();
    }

    /// The next command line the gateway sent (bytes as received, ending included).
    async fn next_command(&mut self) -> String {
        let line = tokio::time::timeout(DEADLINE, self.commands.recv())
            .await
            .expect("a command arrives in time")
            .expect("the command reader runs");
        String::from_utf8(line).expect("UTF-8 command")
    }
}

fn line_spec(
    device: &str,
    instrument: &Instrument,
    command: Option<&str>,
    property: &[&str],
    silence: Duration,
) -> LineSpec {
    let mut config = LineDeviceConfig::new(
        device,
        SerialSettings::new(instrument.port.path()),
        LineSettings::default(),
    );
    config.reopen_backoff =
        BackoffConfig::new(Duration::from_millis(50), Duration::from_millis(300));
    let mut spec = LineSpec::new(
        device,
        config,
        command.map(|c| Template::parse(c).expect("valid template")),
        property.iter().map(|s| (*s).to_owned()).collect(),
    );
    spec.silence = silence;
    spec
}

/// The same reading over and over sends nothing: a change after 20 identical lines is the
/// one update of the twin.
async fn identical_lines_send_nothing(hub: &TestHub, station: &Instrument) {
    let hub_ref = hub;
    let (_, version) = hub.reported("station-01");
    let from = station.printed();
    let station_ref = station;
    eventually("20 more identical lines printed", DEADLINE, || async move {
        station_ref.printed() >= from + 20
    })
    .await;
    station.print(&json!({"temp": 22.0, "hum": 40}));
    eventually("the new temperature is reported", DEADLINE, || async move {
        hub_ref.reported("station-01").0["weather"]["temp"] == json!(22.0)
    })
    .await;
    assert_eq!(
        hub.reported("station-01").1,
        version + 1,
        "identical lines (and health) caused no update"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_reach_the_twin_and_desired_values_are_sent_as_commands() {
    let hub = TestHub::start(&["gw-1", "station-01", "probe-01"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut station = Instrument::plug_in(dir.path().join("ttySTATION"));
    let probe = Instrument::plug_in(dir.path().join("ttyPROBE"));
    let station_path = station.port.path().display().to_string();
    let mut spec = runtime_spec(
        &hub,
        &dir.path().join("tb.db"),
        "gw-1",
        &["station-01", "probe-01"],
    );
    spec.lines = vec![
        line_spec(
            "station-01",
            &station,
            Some("SET {name} {value}\r\n"),
            &["weather"],
            Duration::from_secs(10),
        ),
        line_spec("probe-01", &probe, None, &[], Duration::from_secs(10)),
    ];
    station.print(&json!({"temp": 21.5, "hum": 40}));
    probe.print(&json!({
        "level": 3, "gateway": "fake", "bad.key": 1, "$x": 2, "with space": 4, "n": [1, null],
    }));
    let runtime = Runtime::start(spec).await.expect("runtime starts");

    let hub_ref = &hub;
    eventually(
        "readings reach the hub under the prefix, with health online",
        DEADLINE,
        || async move {
            let station = hub_ref.reported("station-01").0;
            let probe = hub_ref.reported("probe-01").0;
            station["weather"] == json!({"temp": 21.5, "hum": 40})
                && station["gateway"]["online"] == json!(true)
                && probe["level"] == json!(3)
                && probe["gateway"]["online"] == json!(true)
        },
    )
    .await;
    let health = hub.reported("station-01").0["gateway"].clone();
    assert_eq!(health["id"], "gw-1");
    assert_eq!(health["port"], json!(station_path));
    assert_eq!(health["status"], "online");
    assert!(health["lastGoodRead"].is_string(), "{health}");
    assert!(health.get("lastError").is_none(), "{health}");

    // Fields the hub would refuse never reach it; `gateway` stays the link health.
    let probe_twin = hub.reported("probe-01").0;
    let mut keys: Vec<&String> = probe_twin.as_object().expect("an object").keys().collect();
    keys.sort();
    assert_eq!(keys, ["gateway", "level"], "{probe_twin}");
    assert_eq!(probe_twin["gateway"]["id"], "gw-1");

    identical_lines_send_nothing(&hub, &station).await;

    // Desired → the rendered command on the line → acknowledged as sent.
    let version = hub.set_desired("station-01", &json!({"fan": 2}));
    assert_eq!(station.next_command().await, "SET fan 2\r\n");
    eventually("the command is acknowledged", DEADLINE, || async move {
        let fan = &hub_ref.reported("station-01").0["fan"];
        fan["value"] == json!(2) && fan["ac"] == json!(200) && fan["av"] == json!(version)
    })
    .await;
    let fan = hub.reported("station-01").0["fan"].clone();
    assert!(
        fan["ad"].as_str().is_some_and(|d| d.contains("sent")),
        "{fan}"
    );

    // A value with a line break is refused, nothing is sent; a device without a command
    // refuses every desired value.
    let bad = hub.set_desired("station-01", &json!({"mode": "eco\r\nRESET"}));
    let refused = hub.set_desired("probe-01", &json!({"level": 5}));
    eventually("bad desired values are refused", DEADLINE, || async move {
        let station = hub_ref.reported("station-01").0;
        let probe = hub_ref.reported("probe-01").0;
        station["mode"]["ac"] == json!(400)
            && station["mode"]["av"] == json!(bad)
            && probe["level"]["ac"] == json!(400)
            && probe["level"]["av"] == json!(refused)
            // The unchanged fan is acknowledged at the new version, not sent again.
            && station["fan"]["ac"] == json!(200)
            && station["fan"]["av"] == json!(bad)
    })
    .await;
    let next = hub.set_desired("station-01", &json!({"fan": 3}));
    assert_eq!(
        station.next_command().await,
        "SET fan 3\r\n",
        "nothing was sent for the refused value"
    );
    eventually(
        "the next command is acknowledged",
        DEADLINE,
        || async move { hub_ref.reported("station-01").0["fan"]["av"] == json!(next) },
    )
    .await;

    runtime.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_unplugged_instrument_shows_offline_and_gets_desired_values_when_back() {
    let hub = TestHub::start(&["gw-1", "station-01"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut station = Instrument::plug_in(dir.path().join("ttySTATION"));
    let mut spec = runtime_spec(&hub, &dir.path().join("tb.db"), "gw-1", &["station-01"]);
    spec.lines = vec![line_spec(
        "station-01",
        &station,
        Some("SET {name} {value}\n"),
        &["weather"],
        Duration::from_secs(1),
    )];
    station.print(&json!({"temp": 21.5}));
    let runtime = Runtime::start(spec).await.expect("runtime starts");
    let hub_ref = &hub;
    let health = || async move { hub_ref.reported("station-01").0["gateway"].clone() };

    eventually("online first", DEADLINE, || async move {
        health().await["online"] == json!(true)
    })
    .await;

    station.go_silent();
    eventually(
        "a silent instrument shows offline",
        DEADLINE,
        || async move {
            let h = health().await;
            h["online"] == json!(false)
                && h["status"] == json!("offline")
                && h["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("no reading"))
        },
    )
    .await;
    assert!(health().await["lastGoodRead"].is_string());
    assert_eq!(
        hub.reported("station-01").0["weather"]["temp"],
        json!(21.5),
        "the last value stays"
    );

    station.print(&json!({"temp": 23.0}));
    eventually("it is back online", DEADLINE, || async move {
        let twin = hub_ref.reported("station-01").0;
        twin["gateway"]["online"] == json!(true)
            && twin["gateway"].get("lastError").is_none()
            && twin["weather"]["temp"] == json!(23.0)
    })
    .await;

    station.unplug().await;
    eventually(
        "an unplugged instrument shows offline",
        DEADLINE,
        || async move {
            let h = health().await;
            h["online"] == json!(false)
                && h["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("port down"))
        },
    )
    .await;

    // Desired while unplugged: sent once the port is back, then acknowledged.
    let version = hub.set_desired("station-01", &json!({"fan": 1}));
    station.replug();
    assert_eq!(station.next_command().await, "SET fan 1\n");
    eventually("acknowledged after the replug", DEADLINE, || async move {
        let fan = &hub_ref.reported("station-01").0["fan"];
        fan["ac"] == json!(200) && fan["av"] == json!(version)
    })
    .await;
    eventually("online again after the replug", DEADLINE, || async move {
        health().await["online"] == json!(true)
    })
    .await;

    runtime.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_interrupted_by_a_crash_is_not_sent_again() {
    let hub = TestHub::start(&["gw-1", "station-01"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("tb.db");
    let version = hub.set_desired("station-01", &json!({"fan": 1}));
    // What a crash between recording the intent (202) and sending leaves in the store.
    let store = Store::open(&db, StoreOptions::default()).expect("store opens");
    store
        .configure_device("station-01", None)
        .await
        .expect("configured");
    store
        .applied_ack(
            "station-01",
            "fan",
            version,
            json!({"value": 1, "ac": 202, "av": version, "ad": "sending"}),
        )
        .await
        .expect("intent recorded");
    store.close().await.expect("closed");

    let mut station = Instrument::plug_in(dir.path().join("ttySTATION"));
    station.print(&json!({"temp": 21.5}));
    let mut spec = runtime_spec(&hub, &db, "gw-1", &["station-01"]);
    spec.lines = vec![line_spec(
        "station-01",
        &station,
        Some("SET {name} {value}\n"),
        &["weather"],
        Duration::from_secs(10),
    )];
    let runtime = Runtime::start(spec).await.expect("runtime starts");
    let hub_ref = &hub;
    eventually(
        "the interrupted command is acknowledged as not confirmed",
        DEADLINE,
        || async move {
            let fan = &hub_ref.reported("station-01").0["fan"];
            fan["value"] == json!(1) && fan["ac"] == json!(500) && fan["av"] == json!(version)
        },
    )
    .await;
    let next = hub.set_desired("station-01", &json!({"fan": 2}));
    assert_eq!(
        station.next_command().await,
        "SET fan 2\n",
        "the interrupted command was not sent again"
    );
    eventually(
        "the next command is acknowledged",
        DEADLINE,
        || async move {
            let fan = &hub_ref.reported("station-01").0["fan"];
            fan["ac"] == json!(200) && fan["av"] == json!(next)
        },
    )
    .await;

    runtime.shutdown().await.expect("clean shutdown");
}
