//! `twinbridge demo`: the whole mission on one machine, with nothing but Rust.
//!
//! One process runs the hub emulator on loopback (TLS with a certificate made for the run),
//! simulated Modbus units on two pseudo-terminal RS-485 lines, and the real agent runtime with
//! a configuration generated into a temporary directory and loaded by the same code as
//! `twinbridge run --config`. A live view shows each device's values, its twin sync state and
//! the hub's reported version; the script then cuts the hub for a while as values change,
//! unplugs a line, sets a desired value through the emulator's service side, and shows
//! convergence after each step: devices → SQLite → hub, hub → devices.

mod scenario;
mod view;

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use device_protocols::point::Table;
use device_protocols::sim::{Generator, RtuSim, SimMap, UnitMap};
use hub_emulator::state::DeviceIdentity;
use hub_emulator::{Config as HubConfig, Emulator, RunningEmulator};

use crate::cli::check_config::load_checked;
use crate::cli::run::runtime_spec;
use crate::service::{Runtime, RuntimeHandle};

pub use scenario::Step;

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Run the script once and exit (no waiting for Ctrl-C at the end).
    pub once: bool,
    /// How long each phase lasts (values change meanwhile).
    pub phase: Duration,
    /// Redraw the view in place (ANSI) rather than printing it after each step.
    pub live: bool,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Setting up a part failed.
    #[error("{what}: {cause}")]
    Setup {
        /// Which part.
        what: &'static str,
        /// Why.
        cause: String,
    },
    /// A step did not converge in time.
    #[error("{0}")]
    NotConverged(String),
}

fn setup(what: &'static str) -> impl FnOnce(String) -> DemoError {
    move |cause| DemoError::Setup { what, cause }
}

/// The gateway's identity in the demo.
pub const GATEWAY: &str = "demo-gw";

/// The simulated site: two RS-485 lines, five units.
pub(crate) struct Site {
    pub(crate) line_a: RtuSim,
    pub(crate) line_b: RtuSim,
}

/// Everything running.
pub(crate) struct Demo {
    pub(crate) hub: RunningEmulator,
    pub(crate) site: Site,
    pub(crate) handle: RuntimeHandle,
    pub(crate) devices: Vec<String>,
}

/// Runs the demo, writing the view to `out`.
pub async fn run(options: DemoOptions, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    // Say something at once: the setup (TLS certificate, ptys, store) takes a moment.
    let _ = writeln!(
        out,
        "twinbridge demo: starting the hub emulator, two simulated RS-485 lines and the agent…"
    );
    let _ = out.flush();
    let dir = tempfile::tempdir().map_err(|e| setup("temporary directory")(e.to_string()))?;
    let site = start_site(dir.path())?;
    let devices = device_ids();
    let mut identities: Vec<&str> = vec![GATEWAY];
    identities.extend(devices.iter().map(String::as_str));
    let HubParts { hub, keys, ca_pem } = start_hub(&identities).await?;
    let config = write_config(dir.path(), &hub, &site, &keys, &ca_pem)?;
    let checked =
        load_checked(&config, None).map_err(|e| setup("generated configuration")(e.to_string()))?;
    let runtime = Runtime::start(runtime_spec(&checked))
        .await
        .map_err(|e| setup("agent runtime")(e.to_string()))?;
    let _ = writeln!(
        out,
        "twinbridge demo: hub emulator on {}, {} devices on 2 simulated RS-485 lines, config {}",
        hub.mqtt_addr(),
        devices.len(),
        config.display()
    );
    let demo = Demo {
        hub,
        site,
        handle: runtime.handle(),
        devices,
    };
    // Ctrl-C at any point stops everything cleanly (runtime, hub, temporary files).
    let result = tokio::select! {
        result = scenario::play(&demo, &options, out) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    if result.is_ok() && !options.once {
        let _ = writeln!(
            out,
            "\nThe demo keeps running (values keep changing); Ctrl-C exits."
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    runtime
        .shutdown()
        .await
        .map_err(|e| setup("stopping the runtime")(e.to_string()))?;
    demo.hub.shutdown().await;
    result
}

fn device_ids() -> Vec<String> {
    ["boiler-01", "boiler-02", "meter-01", "meter-02", "pump-01"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// f32 in CDAB order (low word first), as the generic meter profile stores it.
fn f32_cdab(value: f32) -> [u16; 2] {
    let bits = value.to_bits();
    [(bits & 0xffff) as u16, (bits >> 16) as u16]
}

fn start_site(dir: &Path) -> Result<Site, DemoError> {
    let boiler = |center: f64| {
        UnitMap::new()
            .with_input(0, &[0, 0])
            .with_generator(
                Table::Input,
                0,
                Generator::Sine {
                    center,
                    amplitude: 15.0,
                    period: Duration::from_secs(20),
                },
            )
            .with_holding(0, &[200])
    };
    let meter = |power: f32| UnitMap::new().with_input(0, &f32_cdab(power));
    let line_a = SimMap::new()
        .with_unit(1, boiler(215.0))
        .with_unit(2, boiler(450.0))
        .with_unit(3, meter(1234.5));
    let line_b = SimMap::new().with_unit(4, meter(87.25)).with_unit(
        5,
        UnitMap::new()
            .with_holding(0, &[1200])
            .with_coils(0, &[true]),
    );
    let start = |name: &str, map| {
        RtuSim::start(dir.join(name), map)
            .map_err(|e| setup("simulated RS-485 line")(e.to_string()))
    };
    Ok(Site {
        line_a: start("ttyRS485-A", line_a)?,
        line_b: start("ttyRS485-B", line_b)?,
    })
}

async fn start_hub(identities: &[&str]) -> Result<HubParts, DemoError> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(|e| setup("hub certificate")(e.to_string()))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let tls = hub_emulator::tls::server_config(vec![cert.cert.der().clone()], key)
        .map_err(|e| setup("hub TLS")(e.to_string()))?;
    let mut config = HubConfig::ephemeral();
    config.hostname = "localhost".into();
    config.tls = Some(tls);
    config.ws_bind = None;
    let keys: Vec<(String, String)> = identities
        .iter()
        .map(|id| ((*id).to_owned(), DeviceIdentity::random_key()))
        .collect();
    for (id, key) in &keys {
        config
            .devices
            .push(DeviceIdentity::new(id.clone(), key.clone(), key.clone()));
    }
    let hub = Emulator::start(config)
        .await
        .map_err(|e| setup("hub emulator")(e.to_string()))?;
    Ok(HubParts {
        hub,
        keys,
        ca_pem: cert.cert.pem(),
    })
}

/// The running hub, the identities' keys, and the certificate the agent must trust.
struct HubParts {
    hub: RunningEmulator,
    keys: Vec<(String, String)>,
    ca_pem: String,
}

/// Writes `keys.toml` (mode 0600), `ca.pem` and `config.toml` into `dir`; returns the config.
fn write_config(
    dir: &Path,
    hub: &RunningEmulator,
    site: &Site,
    keys: &[(String, String)],
    ca_pem: &str,
) -> Result<PathBuf, DemoError> {
    use std::os::unix::fs::PermissionsExt as _;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| setup("writing the demo files")(e.to_string()))
    };
    let mut keys_file = String::new();
    for (id, key) in keys {
        // TOML basic strings: ids and base64 keys hold nothing that needs escaping.
        let _ = writeln!(keys_file, "\"{id}\" = \"{key}\"");
    }
    write("keys.toml", &keys_file)?;
    std::fs::set_permissions(
        dir.join("keys.toml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .map_err(|e| setup("writing the demo files")(e.to_string()))?;
    write("ca.pem", ca_pem)?;
    std::fs::create_dir_all(dir.join("state"))
        .map_err(|e| setup("state directory")(e.to_string()))?;
    let config = format!(
        include_str!("config.toml.in"),
        gateway = GATEWAY,
        port = hub.mqtt_addr().port(),
        line_a = site.line_a.path().display(),
        line_b = site.line_b.path().display(),
    );
    write("config.toml", &config)?;
    Ok(dir.join("config.toml"))
}
