//! `twinbridge run`: the agent itself. Refuses an invalid configuration with the same
//! messages as `check-config` (exit 78), then runs until SIGTERM/SIGINT. A state directory on a
//! read-only file system stops it at start with exit 73, the store untouched.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::check_config::{Checked, load_checked};
use super::{EX_CANTCREAT, EX_CONFIG};
use crate::bridge::{BusSpec, DeviceMap, LineSpec, PointMap};
use crate::config::Config;
use crate::service::{IdentitySpec, RuntimeError, RuntimeSpec, SpecSource, run_until_signal};
use crate::store::{StoreError, StoreOptions};

/// At most how often the gateway twin's summary is recomputed (sent only when it changed).
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// Builds the runtime's spec from a checked configuration.
pub fn runtime_spec(checked: &Checked) -> RuntimeSpec {
    let config = &checked.config;
    let link = config.link_settings();
    let mut gateway = None;
    let mut devices = Vec::with_capacity(config.devices.len());
    for identity in &checked.identities {
        let history = config
            .devices
            .iter()
            .find(|d| d.id == identity.id)
            .and_then(|d| d.history);
        let spec = IdentitySpec {
            id: identity.id.clone(),
            credential: identity.credential.clone(),
            history,
        };
        if identity.is_gateway {
            gateway = Some(spec);
        } else {
            devices.push(spec);
        }
    }
    RuntimeSpec {
        store_path: config.store_path(),
        store_options: StoreOptions::default(),
        retry: link.backoff,
        link,
        pacing: config.pacing(),
        gateway: gateway.expect("credentials::resolve always yields the gateway's identity"),
        devices,
        buses: bus_specs(config),
        lines: line_specs(config),
        summary_every: SUMMARY_EVERY,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// The bridge's view of the configured buses: each bus with the devices on it.
pub fn bus_specs(config: &Config) -> Vec<BusSpec> {
    config
        .buses
        .iter()
        .map(|bus| BusSpec {
            config: bus.config.clone(),
            devices: config
                .devices
                .iter()
                .filter_map(|device| {
                    let field = device.field.as_ref().filter(|f| f.bus == bus.name)?;
                    Some(DeviceMap {
                        device: device.id.clone(),
                        unit: field.unit,
                        poll: field.poll,
                        points: field
                            .points
                            .iter()
                            .map(|p| PointMap {
                                point: p.point.clone(),
                                property: p.property.clone(),
                                deadband: p.deadband,
                            })
                            .collect(),
                    })
                })
                .collect(),
        })
        .collect()
}

/// The bridge's view of the configured line devices (`[device.line]`), in file order.
pub fn line_specs(config: &Config) -> Vec<LineSpec> {
    config
        .devices
        .iter()
        .filter_map(|device| {
            let line = device.line.as_ref()?;
            Some(LineSpec::new(
                device.id.clone(),
                line.config.clone(),
                line.command.clone(),
                line.property.clone(),
            ))
        })
        .collect()
}

/// Runs the agent with the configuration at `path`; returns the process exit code.
pub fn run(path: &Path, credentials_dir: Option<&Path>, err: &mut dyn Write) -> u8 {
    let checked = match load_checked(path, credentials_dir) {
        Ok(checked) => checked,
        Err(errors) => {
            super::print_config_errors(err, &errors, path, "not starting: ");
            return EX_CONFIG;
        }
    };
    // Checked with the configuration: a log_level that got this far parses.
    if let Err(e) =
        crate::service::logging::apply_config(checked.config.gateway.log_level.as_deref())
    {
        tracing::warn!("{e}");
    }
    for warning in checked.config.warnings() {
        tracing::warn!("{warning}");
    }
    let spec = runtime_spec(&checked);
    let reload: SpecSource = {
        let path = path.to_owned();
        let credentials_dir = credentials_dir.map(Path::to_owned);
        Arc::new(move || reload_spec(&path, credentials_dir.as_deref()))
    };
    // One thread for the sessions and drivers is plenty (the store has its own), and keeps
    // the footprint small on a Pi.
    super::block_on_coded(
        tokio::runtime::Builder::new_current_thread(),
        "twinbridge",
        async move {
            run_until_signal(spec, Some(reload)).await.inspect_err(|e| {
                tracing::error!(error = %e, "twinbridge stopped on an error");
            })
        },
        err,
        exit_code,
    )
}

/// The exit code of a runtime error: [`EX_CANTCREAT`] when the state directory is read-only
/// (systemd's `Restart=on-failure` retries: an operator may remount it read-write), 1 otherwise.
fn exit_code(e: &RuntimeError) -> u8 {
    match e {
        RuntimeError::Store(StoreError::ReadOnlyDirectory { .. }) => EX_CANTCREAT,
        _ => 1,
    }
}

/// What a SIGHUP re-reads: the configuration through the same checks as start-up. An invalid
/// one is logged at error level, one line per error as `check-config` prints them (file, line,
/// column, field), and gives `None`.
fn reload_spec(path: &Path, credentials_dir: Option<&Path>) -> Option<RuntimeSpec> {
    match load_checked(path, credentials_dir) {
        Ok(checked) => {
            // The new level applies at once, so the rest of the reload logs at it.
            if let Err(e) =
                crate::service::logging::apply_config(checked.config.gateway.log_level.as_deref())
            {
                tracing::warn!("{e}");
            }
            for warning in checked.config.warnings() {
                tracing::warn!("{warning}");
            }
            Some(runtime_spec(&checked))
        }
        Err(errors) => {
            let mut text = Vec::new();
            super::print_config_errors(&mut text, &errors, path, "not reloading: ");
            for line in String::from_utf8_lossy(&text).lines() {
                tracing::error!("{line}");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn line_devices_become_line_specs_with_their_command_and_prefix() {
        let config = Config::from_str_at(
            "[gateway]\nid = \"gw\"\n[hub]\nhost = \"127.0.0.1\"\n\
             [[bus]]\nname = \"a\"\nport = \"/dev/serial/by-id/a\"\n\
             [[device]]\nid = \"m1\"\nbus = \"a\"\nunit = 1\n\
             points = [{ name = \"t\", table = \"input\", address = 0, type = \"u16\" }]\n\
             [[device]]\nid = \"weather-01\"\n\
             [device.line]\nport = \"/dev/serial/by-id/w\"\nprotocol = \"key-value\"\n\
             command = \"SET {name} {value}\\r\\n\"\nproperty = \"weather\"\n\
             [[device]]\nid = \"scale-02\"\n\
             line = { port = \"/dev/serial/by-id/s\", protocol = \"json-lines\" }\n",
            Path::new("/etc/twinbridge/config.toml"),
        )
        .expect("valid configuration");
        let lines = line_specs(&config);
        assert_eq!(lines.len(), 2, "the bus device is not a line device");
        assert_eq!(lines[0].device, "weather-01");
        assert_eq!(lines[0].property, ["weather"]);
        assert_eq!(
            lines[0]
                .command
                .as_ref()
                .map(|t| t.render_set("fan", &serde_json::json!(2))),
            Some(Ok("SET fan 2\r\n".to_owned()))
        );
        assert_eq!(
            lines[0].config.serial.path,
            Path::new("/dev/serial/by-id/w")
        );
        assert_eq!(lines[0].silence, crate::bridge::line::DEFAULT_SILENCE);
        assert_eq!(lines[1].device, "scale-02");
        assert!(lines[1].command.is_none());
        assert!(lines[1].property.is_empty());
        assert_eq!(bus_specs(&config)[0].devices.len(), 1);
    }

    #[test]
    fn a_read_only_state_dir_exits_73_naming_it_and_other_failures_1() {
        let read_only = RuntimeError::Store(StoreError::ReadOnlyDirectory {
            path: "/var/lib/twinbridge/twinbridge.db".into(),
            dir: "/var/lib/twinbridge".into(),
        });
        assert_eq!(exit_code(&read_only), EX_CANTCREAT);
        let text = read_only.to_string();
        assert!(
            !text.contains('\n') && text.contains("/var/lib/twinbridge is on a read-only"),
            "{text}"
        );
        assert_eq!(exit_code(&RuntimeError::Task("boom".into())), 1);
        assert!(!read_only.is_unwritable_store(), "not a retried write");
    }

    #[test]
    fn a_writable_dir_is_not_read_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(!crate::store::read_only_dir(dir.path()));
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("readable").count(),
            0,
            "the probe leaves nothing behind"
        );
    }
}
