//! A small field site for process tests: the hub emulator, one simulated RS-485 line on a
//! pseudo-terminal with one Modbus unit per device (temperature: input register 0, tenths;
//! setpoint: holding register 0, tenths, writable), and a `config.toml` for `twinbridge run`
//! whose log goes to a file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use device_protocols::sim::{RtuSim, SimHandle, SimMap, UnitMap};

use crate::{TestHub, agent_binary};

/// The site; device `i` of [`PtySite::start`] is unit `i + 1`.
pub struct PtySite {
    /// The hub emulator (gateway and devices registered).
    pub hub: TestHub,
    line: RtuSim,
    config: PathBuf,
    db: PathBuf,
    log: PathBuf,
}

impl std::fmt::Debug for PtySite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtySite")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PtySite {
    /// Starts the hub and the line, and writes the configuration: state in `state_dir` (created;
    /// a `state` folder beside the config when `None`), every device polled every 100 ms.
    pub async fn start(gateway: &str, devices: &[&str], state_dir: Option<&Path>) -> Self {
        let mut ids = vec![gateway];
        ids.extend_from_slice(devices);
        let hub = TestHub::start(&ids).await;
        let mut map = SimMap::new();
        for unit in (1..).take(devices.len()) {
            map = map.with_unit(
                unit,
                UnitMap::new().with_input(0, &[211]).with_holding(0, &[200]),
            );
        }
        let line = RtuSim::start(hub.dir().join("tty"), map).expect("line simulated");
        let state = state_dir.map_or_else(|| hub.dir().join("state"), Path::to_path_buf);
        std::fs::create_dir_all(&state).expect("state dir");
        let mut text = hub.config_head(gateway, &state.display().to_string());
        write!(
            text,
            "\n[[bus]]\nname = \"line\"\nport = \"{}\"\nbaud = 38400\ntimeout = \"100ms\"\n",
            line.path().display()
        )
        .expect("writing to a String");
        for (unit, id) in (1..).zip(devices) {
            write!(
                text,
                r#"
[[device]]
id = "{id}"
bus = "line"
unit = {unit}
poll = "100ms"
points = [
  {{ name = "temperature", table = "input", address = 0, type = "u16", scale = 0.1 }},
  {{ name = "setpoint", table = "holding", address = 0, type = "u16", scale = 0.1, writable = true }},
]
"#
            )
            .expect("writing to a String");
        }
        let config = hub.dir().join("config.toml");
        std::fs::write(&config, text).expect("config written");
        let log = hub.dir().join("agent.log");
        Self {
            db: state.join("twinbridge.db"),
            log,
            config,
            hub,
            line,
        }
    }

    /// The simulated line.
    pub fn sim(&self) -> &SimHandle {
        self.line.handle()
    }

    /// The configuration file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The store file.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// `twinbridge run` for this site, warnings and errors appended to the log file.
    pub fn command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = Command::new(agent_binary());
        command
            .args(["run", "--config"])
            .arg(&self.config)
            .env("TWINBRIDGE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        command
    }

    /// What the agents logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `twinbridge status` (stdout and stderr).
    pub fn status(&self) -> String {
        let out = Command::new(agent_binary())
            .args(["status", "--config"])
            .arg(&self.config)
            .output()
            .expect("twinbridge status runs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `PRAGMA integrity_check` of the store ("ok" when sound).
    pub fn integrity(&self) -> String {
        let conn = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("store opens read-only");
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check runs")
    }

    /// The hub's reported `temperature` of `device`.
    pub fn hub_temperature(&self, device: &str) -> Option<f64> {
        self.hub.reported(device).0["temperature"].as_f64()
    }
}

/// Register writes (function codes 6 and 16) `unit` has received.
pub fn register_writes(sim: &SimHandle, unit: u8) -> u64 {
    let stats = sim.stats(unit).expect("unit simulated");
    stats.by_function[6] + stats.by_function[16]
}
