//! The real `twinbridge run` with field devices: six simulated Modbus devices on two pty
//! RS-485 lines and one Modbus TCP endpoint, configured as a technician would, against the hub
//! emulator. Register values converge into the hub twins and desired values into the
//! registers; kill -9 during syncs and desired writes never writes a desired version twice;
//! a renamed property leaves no stale value; a removed device keeps its rows until `forget`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use device_protocols::point::Table;
use device_protocols::sim::{RtuSim, SimMap, TcpSim, UnitMap};
use rand::Rng as _;
use serde_json::{Value, json};
use twinbridge::store::ReadOnlyStore;
use twinbridge_e2e::{DEADLINE, TestHub, agent_binary, eventually, spawn_ready, terminate};

const GATEWAY: &str = "gw-1";

/// (device id, bus, unit) of the site.
const DEVICES: [(&str, &str, u8); 6] = [
    ("boiler-01", "line-a", 1),
    ("boiler-02", "line-a", 2),
    ("boiler-03", "line-a", 3),
    ("boiler-04", "line-b", 4),
    ("boiler-05", "line-b", 5),
    ("plc-01", "plc", 1),
];

/// Every unit: temperature (input 0, tenths), setpoint (holding 0, tenths, writable).
fn unit(temperature: u16) -> UnitMap {
    UnitMap::new()
        .with_input(0, &[temperature])
        .with_holding(0, &[200])
}

struct Site {
    hub: TestHub,
    line_a: RtuSim,
    line_b: RtuSim,
    plc: TcpSim,
    config: PathBuf,
    db: PathBuf,
}

impl Site {
    async fn start() -> Self {
        let mut ids = vec![GATEWAY];
        ids.extend(DEVICES.iter().map(|d| d.0));
        let hub = TestHub::start(&ids).await;
        let line_a = RtuSim::start(
            hub.dir().join("ttyA"),
            SimMap::new()
                .with_unit(1, unit(211))
                .with_unit(2, unit(212))
                .with_unit(3, unit(213)),
        )
        .expect("line A simulated");
        let line_b = RtuSim::start(
            hub.dir().join("ttyB"),
            SimMap::new()
                .with_unit(4, unit(214))
                .with_unit(5, unit(215)),
        )
        .expect("line B simulated");
        let plc = TcpSim::start(SimMap::new().with_unit(1, unit(216)))
            .await
            .expect("Modbus TCP simulated");
        let state = hub.dir().join("state");
        std::fs::create_dir(&state).expect("state dir");
        let mut site = Self {
            config: hub.dir().join("config.toml"),
            db: state.join("twinbridge.db"),
            hub,
            line_a,
            line_b,
            plc,
        };
        site.write_config("temperature", &DEVICES);
        site
    }

    /// The configuration, as the docs describe it: the temperature point reported under
    /// `temperature_property`, for the devices in `devices`.
    fn write_config(&mut self, temperature_property: &str, devices: &[(&str, &str, u8)]) {
        let mut text = self.hub.config_head(GATEWAY, "state");
        write!(
            text,
            r#"
[[bus]]
name = "line-a"
port = "{line_a}"
baud = 38400
timeout = "100ms"

[[bus]]
name = "line-b"
port = "{line_b}"
baud = 19200
timeout = "100ms"

[[bus]]
name = "plc"
tcp = "{plc}"
timeout = "200ms"
"#,
            line_a = self.line_a.path().display(),
            line_b = self.line_b.path().display(),
            plc = self.plc.addr(),
        )
        .expect("writing to a String");
        for (id, bus, unit) in devices {
            write!(
                text,
                r#"
[[device]]
id = "{id}"
bus = "{bus}"
unit = {unit}
poll = "200ms"
points = [
  {{ name = "temperature", table = "input", address = 0, type = "u16", scale = 0.1, property = "{temperature_property}" }},
  {{ name = "setpoint", table = "holding", address = 0, type = "u16", scale = 0.1, writable = true }},
]
"#
            )
            .expect("writing to a String");
        }
        std::fs::write(&self.config, text).expect("config written");
    }

    fn sim(&self, device: &str) -> (&device_protocols::sim::SimHandle, u8) {
        let (_, bus, unit) = DEVICES
            .iter()
            .find(|d| d.0 == device)
            .expect("a site device");
        let handle = match *bus {
            "line-a" => self.line_a.handle(),
            "line-b" => self.line_b.handle(),
            _ => self.plc.handle(),
        };
        (handle, *unit)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(agent_binary());
        command
            .args(["run", "--config"])
            .arg(&self.config)
            .env("TWINBRIDGE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        command
    }

    /// Starts the agent and waits for its READY=1 (it will be signalled).
    async fn start_agent(&self) -> Child {
        spawn_ready(self.command()).await
    }

    /// The device's local reported document (`null` until the agent has created the store
    /// and the device in it).
    fn local(&self, device: &str) -> Value {
        ReadOnlyStore::open(&self.db)
            .ok()
            .and_then(|store| store.snapshot(device).ok().flatten())
            .map_or(Value::Null, |s| s.sync.local)
    }

    async fn converged(&self, devices: &[&str]) {
        for device in devices {
            eventually(&format!("{device} converges"), DEADLINE, || {
                let want = self.local(device);
                let got = self.hub.reported(device).0;
                async move { got == want && want.get("gateway").is_some() }
            })
            .await;
        }
    }
}

fn register_writes(sim: &device_protocols::sim::SimHandle, unit: u8) -> u64 {
    let stats = sim.stats(unit).expect("unit simulated");
    stats.by_function[6] + stats.by_function[16]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_devices_converge_both_ways_through_the_real_binary() {
    let site = Site::start().await;
    let agent = site.start_agent().await;
    let hub = &site.hub;
    for (i, (device, _, _)) in DEVICES.iter().enumerate() {
        let want = json!(21.1 + 0.1 * i as f64);
        eventually(&format!("{device}'s temperature reaches the hub"), DEADLINE, || {
            let got = hub.reported(device).0["temperature"].clone();
            let want = want.clone();
            async move { (got.as_f64().unwrap_or(0.0) - want.as_f64().unwrap_or(1.0)).abs() < 1e-9 }
        })
        .await;
    }
    // A register change reaches the hub; a desired value reaches the register.
    let (sim, unit) = site.sim("boiler-04");
    sim.set_values(unit, Table::Input, 0, &[250]);
    let (plc, plc_unit) = site.sim("plc-01");
    let version = hub.set_desired("plc-01", &json!({"setpoint": 19.5}));
    eventually("the change and the write land", DEADLINE, || async move {
        hub.reported("boiler-04").0["temperature"] == json!(25.0)
            && plc.holding(plc_unit, 0) == Some(195)
            && hub.reported("plc-01").0["setpoint"]
                == json!({"value": 19.5, "ac": 200, "av": version})
    })
    .await;
    let ids: Vec<&str> = DEVICES.iter().map(|d| d.0).collect();
    site.converged(&ids).await;
    let status = terminate(agent).await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

/// kill -9 the agent at random moments while it syncs and writes desired values; after a final
/// restart every twin equals its device's state and no desired version was written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_desired_writes_never_writes_a_version_twice() {
    let site = Site::start().await;
    let hub = &site.hub;
    let (sim, unit) = site.sim("boiler-01");
    let mut rng = rand::rng();
    let mut versions = 0;
    for trial in 0..22 {
        let setpoint = 150 + trial;
        hub.set_desired(
            "boiler-01",
            &json!({"setpoint": f64::from(setpoint) / 10.0}),
        );
        versions += 1;
        sim.set_values(unit, Table::Input, 0, &[200 + rng.random_range(0..50)]);
        let mut agent = site.command().spawn().expect("twinbridge starts");
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..700))).await; // the random moment
        agent.kill().expect("SIGKILL sent");
        agent.wait().expect("reaped");
    }
    let agent = site.start_agent().await;
    let ids: Vec<&str> = DEVICES.iter().map(|d| d.0).collect();
    site.converged(&ids).await;
    let writes = register_writes(sim, unit);
    assert!(
        writes <= versions,
        "{writes} register writes for {versions} desired versions: a version was written twice"
    );
    assert!(writes > 0, "some writes happened during the trials");
    // The twin tells the truth about the register.
    let reported = hub.reported("boiler-01").0;
    let register = f64::from(sim.holding(unit, 0).expect("register")) / 10.0;
    let acked = reported["setpoint"]["value"].as_f64().expect("acked value");
    assert!(
        (acked - register).abs() < 1e-9,
        "{reported} vs register {register}"
    );
    let status = terminate(agent).await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

/// Between runs: a renamed property path removes the old key from the twin; a removed device
/// stops syncing but keeps its store rows until `twinbridge forget`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_between_runs_leave_nothing_stale_and_lose_nothing() {
    let mut site = Site::start().await;
    let agent = site.start_agent().await;
    site.converged(&["boiler-01", "boiler-05"]).await;
    let status = terminate(agent).await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(
        site.hub
            .reported("boiler-05")
            .0
            .get("temperature")
            .is_some()
    );

    // Rename the property and drop boiler-05 from the configuration.
    let kept: Vec<_> = DEVICES
        .iter()
        .copied()
        .filter(|d| d.0 != "boiler-05")
        .collect();
    site.write_config("heating.flow", &kept);
    let agent = site.start_agent().await;
    let hub = &site.hub;
    eventually(
        "the renamed property replaces the old one",
        DEADLINE,
        || async move {
            let reported = hub.reported("boiler-01").0;
            reported.get("temperature").is_none() && reported["heating"]["flow"] == json!(21.1)
        },
    )
    .await;
    let (sim, unit) = site.sim("boiler-05");
    sim.set_values(unit, Table::Input, 0, &[300]);
    site.converged(&["boiler-01"]).await;
    assert_ne!(
        hub.reported("boiler-05").0["temperature"],
        json!(30.0),
        "a removed device no longer syncs"
    );
    let status = terminate(agent).await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(
        site.local("boiler-05").get("temperature").is_some(),
        "its rows are kept"
    );

    // Without a terminal to confirm on, and without --yes, nothing is deleted.
    let unconfirmed = Command::new(agent_binary())
        .args(["forget", "boiler-05", "--config"])
        .arg(&site.config)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("twinbridge forget runs");
    assert_eq!(unconfirmed.status.code(), Some(64), "EX_USAGE");
    assert!(
        String::from_utf8_lossy(&unconfirmed.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&unconfirmed.stderr)
    );
    assert!(
        site.local("boiler-05").get("temperature").is_some(),
        "kept until confirmed"
    );
    let forget = Command::new(agent_binary())
        .args(["forget", "--yes", "boiler-05", "--config"])
        .arg(&site.config)
        .output()
        .expect("twinbridge forget runs");
    assert!(
        forget.status.success(),
        "{}",
        String::from_utf8_lossy(&forget.stderr)
    );
    assert_eq!(site.local("boiler-05"), Value::Null, "forgotten");
    let still = Command::new(agent_binary())
        .args(["forget", "--yes", "boiler-01", "--config"])
        .arg(&site.config)
        .output()
        .expect("twinbridge forget runs");
    assert_eq!(
        still.status.code(),
        Some(78),
        "a configured device is not forgotten"
    );
}
