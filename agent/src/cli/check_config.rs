//! `twinbridge check-config`: validate the configuration and credentials without starting.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::EX_CONFIG;
use crate::config::{Config, ConfigErrors};
use crate::credentials::{self, Identity};

/// A configuration that passed every check, with its credentials resolved.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The configuration.
    pub config: Config,
    /// Every identity with its credential, the gateway first.
    pub identities: Vec<Identity>,
}

/// Loads and validates the configuration at `path`, then resolves every identity's
/// credentials. This is what `run` calls before starting anything: on `Err`, print each
/// error on its own line (they are the same lines `check-config` prints) and exit
/// [`EX_CONFIG`].
///
/// Configuration errors are reported first; credentials are only resolved once the
/// configuration itself is valid.
pub fn load_checked(path: &Path, credentials_dir: Option<&Path>) -> Result<Checked, ConfigErrors> {
    let config = Config::load(path)?;
    let identities = credentials::resolve(&config, credentials_dir)?;
    Ok(Checked { config, identities })
}

/// Runs `check-config`: prints every error on `err` (one per line) and returns
/// [`EX_CONFIG`], or prints a summary on `out` and returns 0.
pub fn run(
    path: &Path,
    credentials_dir: Option<&Path>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    match load_checked(path, credentials_dir) {
        Ok(checked) => {
            // A closed stdout is no reason to call a valid configuration invalid.
            let _ = write_summary(&checked, out);
            for warning in checked.config.warnings() {
                let _ = writeln!(err, "warning: {warning}");
            }
            0
        }
        Err(errors) => {
            super::print_config_errors(err, &errors, path, "");
            EX_CONFIG
        }
    }
}

fn write_summary(checked: &Checked, out: &mut dyn Write) -> std::io::Result<()> {
    let config = &checked.config;
    let hub = &config.hub;
    let transport = match hub.transport {
        crate::hub::Transport::Mqtt => "mqtt",
        crate::hub::Transport::MqttWs => "mqtt-ws",
    };
    let port = hub.port.unwrap_or_else(|| hub.transport.default_port());
    writeln!(out, "configuration OK")?;
    writeln!(out, "gateway: {}", config.gateway.id)?;
    writeln!(out, "hub: {}:{port} ({transport})", hub.host)?;
    if let Some(proxy) = &hub.proxy {
        writeln!(out, "proxy: {}:{}", proxy.host, proxy.port)?;
    }
    writeln!(
        out,
        "identities: {} (the gateway and {} device{})",
        checked.identities.len(),
        config.devices.len(),
        if config.devices.len() == 1 { "" } else { "s" }
    )?;
    for bus in &config.buses {
        let devices: Vec<_> = config
            .devices
            .iter()
            .filter_map(|d| d.field.as_ref())
            .filter(|f| f.bus == bus.name)
            .collect();
        let points: usize = devices.iter().map(|f| f.points.len()).sum();
        writeln!(
            out,
            "bus {}: {} ({} device{}, {} point{})",
            bus.name,
            bus.config.transport,
            devices.len(),
            if devices.len() == 1 { "" } else { "s" },
            points,
            if points == 1 { "" } else { "s" }
        )?;
    }
    for (id, line) in config
        .devices
        .iter()
        .filter_map(|d| Some((&d.id, d.line.as_ref()?)))
    {
        let format = match line.config.line.format {
            device_protocols::line::LineFormat::JsonLines => "json-lines",
            device_protocols::line::LineFormat::KeyValue => "key-value",
        };
        writeln!(
            out,
            "line device {id}: serial {} ({format})",
            line.config.serial
        )?;
    }
    writeln!(out, "store: {}", config.store_path().display())?;
    writeln!(out, "files read:")?;
    for file in config.files.iter().chain(&config.profile_files) {
        writeln!(out, "  {}", file.display())?;
    }
    Ok(())
}

/// The credentials directory to use: `explicit`, else `$CREDENTIALS_DIRECTORY`.
pub fn credentials_dir(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(credentials::credentials_dir_from_env)
}
