//! SIGHUP reload of the real `twinbridge run`: simulated Modbus devices on pty RS-485 lines,
//! the hub emulator, the agent's own `NOTIFY_SOCKET`. A rewritten configuration (a device added
//! to bus B, a device removed from it, a new bus C, a new line device) takes effect without a
//! restart and without touching bus A; an invalid one is refused with its `file:line:column` errors and the agent
//! keeps running the old one; SIGTERM still stops it cleanly.

use std::fmt::Write as _;
use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use device_protocols::point::Table;
use device_protocols::pty::VirtualPort;
use device_protocols::sim::{RtuSim, SimMap, UnitMap};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use twinbridge_e2e::{
    DEADLINE, NotifySocket, TestHub, agent_binary, eventually, has_line, spawn_notified, terminate,
};

const GATEWAY: &str = "gw-1";
/// The line device (a JSON-lines instrument) the reload adds.
const LINE_DEVICE: &str = "w1";

/// (device id, bus, unit) before the reload.
const BEFORE: [(&str, &str, u8); 3] = [("a1", "bus-a", 1), ("b1", "bus-b", 1), ("b2", "bus-b", 2)];
/// After: b2 removed, b3 added on bus B, c1 on the new bus C.
const AFTER: [(&str, &str, u8); 4] = [
    ("a1", "bus-a", 1),
    ("b1", "bus-b", 1),
    ("b3", "bus-b", 3),
    ("c1", "bus-c", 1),
];

/// A unit whose temperature (input 0, tenths) reads `tenths`.
fn unit(tenths: u16) -> UnitMap {
    UnitMap::new().with_input(0, &[tenths])
}

struct Site {
    hub: TestHub,
    bus_a: RtuSim,
    bus_b: RtuSim,
    bus_c: RtuSim,
    instrument: Instrument,
    config: PathBuf,
}

/// A serial instrument on a pty that prints `{"humidity": 41}` every 100 ms.
struct Instrument {
    port: VirtualPort,
    task: tokio::task::JoinHandle<()>,
}

impl Instrument {
    fn plug_in(path: PathBuf) -> Self {
        let mut port = VirtualPort::new(path).expect("instrument pty opens");
        let mut master = port.take_master().expect("plugged in");
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            loop {
                tick.tick().await;
                if master.write_all(b"{\"humidity\": 41}\n").await.is_err() {
                    return;
                }
            }
        });
        Self { port, task }
    }
}

impl Drop for Instrument {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Site {
    async fn start() -> Self {
        let hub = TestHub::start(&[GATEWAY, "a1", "b1", "b2", "b3", "c1", LINE_DEVICE]).await;
        let bus_a = RtuSim::start(
            hub.dir().join("ttyA"),
            SimMap::new().with_unit(1, unit(101)),
        )
        .expect("bus A simulated");
        // b3 answers on bus B from the start; it is only configured by the reload.
        let bus_b = RtuSim::start(
            hub.dir().join("ttyB"),
            SimMap::new()
                .with_unit(1, unit(201))
                .with_unit(2, unit(202))
                .with_unit(3, unit(203)),
        )
        .expect("bus B simulated");
        let bus_c = RtuSim::start(
            hub.dir().join("ttyC"),
            SimMap::new().with_unit(1, unit(301)),
        )
        .expect("bus C simulated");
        let instrument = Instrument::plug_in(hub.dir().join("ttyW"));
        std::fs::create_dir(hub.dir().join("state")).expect("state dir");
        Self {
            config: hub.dir().join("config.toml"),
            hub,
            bus_a,
            bus_b,
            bus_c,
            instrument,
        }
    }

    /// The configuration text with the buses the devices use, the devices, and the line
    /// device if `line`.
    fn config_text(&self, devices: &[(&str, &str, u8)], line: bool) -> String {
        let mut text = self.hub.config_head(GATEWAY, "state");
        for (name, sim) in [
            ("bus-a", &self.bus_a),
            ("bus-b", &self.bus_b),
            ("bus-c", &self.bus_c),
        ] {
            if devices.iter().any(|d| d.1 == name) {
                write!(
                    text,
                    "\n[[bus]]\nname = \"{name}\"\nport = \"{}\"\nbaud = 19200\ntimeout = \"100ms\"\n",
                    sim.path().display()
                )
                .expect("writing to a String");
            }
        }
        for (id, bus, unit) in devices {
            write!(
                text,
                r#"
[[device]]
id = "{id}"
bus = "{bus}"
unit = {unit}
poll = "200ms"
points = [{{ name = "temperature", table = "input", address = 0, type = "u16", scale = 0.1 }}]
"#
            )
            .expect("writing to a String");
        }
        if line {
            write!(
                text,
                "\n[[device]]\nid = \"{LINE_DEVICE}\"\nline = {{ port = \"{}\", protocol = \"json-lines\" }}\n",
                self.instrument.port.path().display()
            )
            .expect("writing to a String");
        }
        text
    }

    fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("config written");
    }

    /// The simulator and unit of a device.
    fn sim(&self, device: &str) -> (&device_protocols::sim::SimHandle, u8) {
        let (_, bus, unit) = BEFORE
            .iter()
            .chain(&AFTER)
            .find(|d| d.0 == device)
            .expect("a site device");
        let sim = match *bus {
            "bus-a" => &self.bus_a,
            "bus-b" => &self.bus_b,
            _ => &self.bus_c,
        };
        (sim.handle(), *unit)
    }

    /// Sets the device's temperature register to `tenths`.
    fn set_temperature(&self, device: &str, tenths: u16) {
        let (sim, unit) = self.sim(device);
        sim.set_values(unit, Table::Input, 0, &[tenths]);
    }

    /// The hub's reported temperature of `device`, if any.
    fn hub_temperature(&self, device: &str) -> Option<f64> {
        self.hub.reported(device).0["temperature"].as_f64()
    }

    /// Waits until the hub shows `tenths` as `device`'s temperature.
    async fn reaches_hub(&self, device: &str, tenths: u16) {
        let want = f64::from(tenths) / 10.0;
        eventually(
            &format!("{device}'s temperature {want} reaches the hub"),
            DEADLINE,
            || async move {
                self.hub_temperature(device)
                    .is_some_and(|t| (t - want).abs() < 1e-9)
            },
        )
        .await;
    }

    async fn configured_identities(&self, count: u64) {
        eventually(
            &format!("the gateway twin counts {count} identities"),
            DEADLINE,
            || async move {
                self.hub.reported(GATEWAY).0["identities"]["configured"] == json!(count)
            },
        )
        .await;
    }

    async fn start_agent(&self) -> (Child, NotifySocket, Stderr) {
        let mut command = Command::new(agent_binary());
        command
            .args(["run", "--config"])
            .arg(&self.config)
            .env("TWINBRIDGE_LOG", "warn,twinbridge::service=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let (mut child, notify) = spawn_notified(command).await;
        let stderr = Stderr::capture(&mut child);
        (child, notify, stderr)
    }
}

/// The agent's stderr, collected (and echoed) line by line by a thread.
#[derive(Clone)]
struct Stderr(Arc<Mutex<String>>);

impl Stderr {
    fn capture(child: &mut Child) -> Self {
        let pipe = child.stderr.take().expect("stderr piped");
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                eprintln!("agent: {line}");
                let mut text = sink.lock().expect("stderr buffer");
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self(text)
    }

    fn text(&self) -> String {
        self.0.lock().expect("stderr buffer").clone()
    }

    /// Waits until a line containing `needle` has been logged (the pipe is read by a thread:
    /// a line written before a notification may arrive after it); returns that line.
    async fn line_with(&self, needle: &str) -> String {
        eventually(&format!("the agent logs {needle:?}"), DEADLINE, || async {
            self.text().contains(needle)
        })
        .await;
        self.text()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned)
            .unwrap_or_default()
    }
}

fn hang_up(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32")),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP sent");
}

/// Waits for `RELOADING=1` with a `MONOTONIC_USEC` in the same message, then for `READY=1`.
async fn reload_notified(notify: &NotifySocket) {
    let reloading = notify
        .wait_for("RELOADING=1", |m| has_line(m, "RELOADING=1"))
        .await;
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 comes with MONOTONIC_USEC: {reloading:?}"));
    assert!(
        usec.parse::<u64>().is_ok_and(|us| us > 0),
        "MONOTONIC_USEC is a count of microseconds: {usec:?}"
    );
    let ready = notify
        .wait_for("READY=1 after the reload", |m| {
            has_line(m, "READY=1") || has_line(m, "RELOADING=1")
        })
        .await;
    assert!(
        has_line(&ready, "READY=1"),
        "READY=1 before another reload: {ready:?}"
    );
}

fn link_health(site: &Site, device: &str) -> Value {
    site.hub.reported(device).0["gateway"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_configuration_without_disturbing_the_rest() {
    let site = Site::start().await;
    site.write_config(&site.config_text(&BEFORE, false));
    let (agent, notify, stderr) = site.start_agent().await;
    for (device, tenths) in [("a1", 101), ("b1", 201), ("b2", 202)] {
        site.reaches_hub(device, tenths).await;
    }
    site.configured_identities(4).await;

    // Bus A's port path disappears (like a /dev/serial/by-id link): the open port keeps
    // working, but a bus that reopened it would find nothing there.
    std::fs::remove_file(site.bus_a.path()).expect("bus A's link removed");
    site.set_temperature("a1", 111);
    site.reaches_hub("a1", 111).await;

    site.write_config(&site.config_text(&AFTER, true));
    hang_up(&agent);
    reload_notified(&notify).await;
    let b2_version = site.hub.reported("b2").1;
    let applied = stderr.line_with("configuration reloaded").await;
    assert!(
        applied.contains("devices added: b3, c1, w1")
            && applied.contains("line devices added: w1")
            && applied.contains("devices removed: b2")
            && applied.contains("buses added: bus-c")
            && applied.contains("buses restarted: bus-b")
            && !applied.contains("bus-a"),
        "{applied}"
    );

    // The added devices (on the restarted bus B and the new bus C) reach their twins.
    site.reaches_hub("b3", 203).await;
    site.reaches_hub("c1", 301).await;
    let hub = &site.hub;
    eventually(
        "the line device's readings reach the hub",
        DEADLINE,
        || async {
            let reported = hub.reported(LINE_DEVICE).0;
            reported["humidity"] == json!(41) && reported["gateway"]["online"] == json!(true)
        },
    )
    .await;
    site.configured_identities(6).await;
    let emulator = site.hub.emu().hub();
    eventually(
        "the removed device's session is closed",
        DEADLINE,
        || async { !emulator.is_connected("b2") },
    )
    .await;
    // The removed device's twin stops changing, while the others go on.
    site.set_temperature("b2", 222);
    site.set_temperature("a1", 121);
    site.set_temperature("b1", 221);
    site.reaches_hub("a1", 121).await;
    site.reaches_hub("b1", 221).await;
    let b2 = site.hub.reported("b2");
    assert_eq!(
        b2.1, b2_version,
        "b2's twin changed after the reload: {}",
        b2.0
    );
    assert_ne!(site.hub_temperature("b2"), Some(22.2));
    // Bus A was never reopened: its device stayed online throughout.
    let health = link_health(&site, "a1");
    assert_eq!(health["online"], json!(true), "{health}");
    assert_eq!(health["bus"], json!("bus-a"), "{health}");

    // An invalid configuration is refused with its file:line errors; the old one keeps going.
    let mut bad = site.config_text(&AFTER, true);
    // A field no device has, in the last device's table.
    let bad_line = bad.lines().count() + 1;
    bad.push_str("bogus = 1\n");
    site.write_config(&bad);
    hang_up(&agent);
    reload_notified(&notify).await;
    let error = stderr.line_with(&format!("config.toml:{bad_line}:1")).await;
    assert!(
        error.contains("bogus") && error.contains("ERROR"),
        "the error names file, line, column and field, at error level: {error}"
    );
    stderr.line_with("not reloading: 1 error").await;
    site.set_temperature("a1", 131);
    site.set_temperature("b3", 233);
    site.set_temperature("c1", 331);
    for (device, tenths) in [("a1", 131), ("b3", 233), ("c1", 331)] {
        site.reaches_hub(device, tenths).await;
    }
    site.configured_identities(6).await;

    let status = terminate(agent).await;
    assert!(
        status.success(),
        "clean exit on SIGTERM after reloads: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_sighup_stops_cleanly() {
    let site = Site::start().await;
    site.write_config(&site.config_text(&BEFORE, false));
    let (agent, notify, _stderr) = site.start_agent().await;
    site.reaches_hub("b2", 202).await;
    site.write_config(&site.config_text(&AFTER, true));
    hang_up(&agent);
    notify
        .wait_for("RELOADING=1", |m| has_line(m, "RELOADING=1"))
        .await;
    let status = terminate(agent).await;
    assert!(
        status.success(),
        "clean exit on SIGTERM during a reload: {status}"
    );
}
