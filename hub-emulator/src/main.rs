//! The `hub-emulator` binary.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hub_emulator::{Config, Emulator, load_registry_file, sas, tls};

/// A local stand-in for Azure IoT Hub's device twin surface: device MQTT 3.1.1 (twin GET,
/// reported PATCH, desired notifications, SAS authentication) and the service REST API
/// (twins, devices, queries), plus a control endpoint for fault injection and counters.
///
/// On start it prints one line to stdout:
/// `listening mqtt=ADDR tls=BOOL ws=ADDR|off service=ADDR|off control=ADDR|off` (ports
/// resolved when 0).
#[derive(Debug, Parser)]
#[command(name = "hub-emulator", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Registry file (TOML, or JSON when named *.json): a list `device` of
    /// `{ id, primary_key, secondary_key, thumbprint?, status? }` (keys base64).
    #[arg(long, value_name = "FILE", global = true)]
    registry: Option<PathBuf>,

    /// The hub's host name: devices must name it in their MQTT username
    /// (`{host}/{deviceId}/?api-version=…`) and in the SAS token's `sr`.
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST", global = true)]
    hostname: String,

    /// Device MQTT listen address [default: 127.0.0.1:8883 with TLS, 127.0.0.1:1883 without].
    /// Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    mqtt_bind: Option<SocketAddr>,

    /// Also serve MQTT over WebSocket on this address, as IoT Hub does on port 443: upgrade on
    /// `/$iothub/websocket`, subprotocol `mqtt`, over TLS when --tls-cert is given. Port 0
    /// picks a free port. Off when not given.
    #[arg(long, value_name = "ADDR")]
    ws_bind: Option<SocketAddr>,

    /// PEM certificate chain for MQTT over TLS (and WebSocket over TLS) (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key for MQTT over TLS (needs --tls-cert). Refused when its group or others
    /// may access it: `chmod 600` it.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Service REST API listen address. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    service_bind: SocketAddr,

    /// Do not start the service REST API.
    #[arg(long)]
    no_service: bool,

    /// Shared-access key (base64) the service API requires in `Authorization`; none = open.
    #[arg(long, value_name = "BASE64", value_parser = base64_key)]
    service_key: Option<String>,

    /// Control endpoint listen address (drop connections, refuse, delay, throttle, inject raw
    /// desired notifications, counters).
    /// Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8081", value_name = "ADDR")]
    control_bind: SocketAddr,

    /// Do not start the control endpoint.
    #[arg(long)]
    no_control: bool,

    /// Persist registry and twins to this JSON file (atomic replace on every change) and load
    /// them from it at start, so a restart keeps them.
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,

    /// Twin operations (GET, reported PATCH) per second across the hub; above it devices get
    /// status 429. Unlimited when not given.
    #[arg(long, value_name = "RATE")]
    twin_ops_per_sec: Option<f64>,

    /// Clock skew tolerated on SAS token expiry (humantime, e.g. `5m`, `0s`).
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    sas_skew: Duration,

    /// Log filter (tracing `EnvFilter` syntax); the `RUST_LOG` variable overrides it.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a device's SAS token (its MQTT password) for --hostname and exit. The MQTT
    /// username is `{hostname}/{device}/?api-version=2021-04-12`.
    Token {
        /// The device id.
        #[arg(long, value_name = "ID")]
        device: String,
        /// The device key (base64); default: the primary key from --registry.
        #[arg(long, value_name = "BASE64")]
        key: Option<String>,
        /// How long the token stays valid (humantime, e.g. `1h`, `30m`).
        #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Token { device, key, ttl }) = &cli.command {
        return print_token(&cli, device, key.as_deref(), *ttl);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log))
        .with_context(|| format!("invalid --log filter {:?}", cli.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let devices = match &cli.registry {
        Some(path) => load_registry_file(path)?,
        None => Vec::new(),
    };
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config_from_files(cert, key)?),
        _ => None,
    };
    let config = Config {
        hostname: cli.hostname,
        mqtt_bind: cli
            .mqtt_bind
            .unwrap_or_else(|| default_mqtt_bind(tls.is_some())),
        tls,
        ws_bind: cli.ws_bind,
        service_bind: (!cli.no_service).then_some(cli.service_bind),
        control_bind: (!cli.no_control).then_some(cli.control_bind),
        devices,
        state_file: cli.state_file,
        twin_ops_per_sec: cli.twin_ops_per_sec,
        service_key: cli.service_key,
        sas_skew: cli.sas_skew,
    };
    let running = Emulator::start(config)
        .await
        .context("starting hub-emulator")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", running.listening_line()).context("writing to stdout")?;
    stdout.flush().context("flushing stdout")?;
    drop(stdout);

    shutdown_signal().await?;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// A base64 key argument, refused at parse time when it is not base64 (a typo would otherwise
/// only show as every request failing with 401).
fn base64_key(s: &str) -> Result<String, String> {
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s.trim())
        .map(|_| s.to_owned())
        .map_err(|e| format!("not base64: {e}"))
}

/// Loopback, on MQTT's TLS port 8883 or its plain port 1883.
fn default_mqtt_bind(tls: bool) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], if tls { 8883 } else { 1883 }))
}

fn print_token(cli: &Cli, device: &str, key: Option<&str>, ttl: Duration) -> anyhow::Result<()> {
    let key = match (key, &cli.registry) {
        (Some(k), _) => k.to_owned(),
        (None, Some(path)) => {
            load_registry_file(path)?
                .into_iter()
                .find(|d| d.device_id == device)
                .with_context(|| format!("device {device:?} is not in {}", path.display()))?
                .primary_key
        }
        (None, None) => anyhow::bail!("give --key, or --registry to look the key up"),
    };
    anyhow::ensure!(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key.trim()).is_ok(),
        "the key of {device:?} is not base64"
    );
    let expiry = hub_emulator::state::now_epoch_secs() + ttl.as_secs();
    println!("{}", sas::generate(&cli.hostname, device, &key, expiry));
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::{Cli, default_mqtt_bind};

    #[test]
    fn service_key_must_be_base64() {
        let parse = |key: &str| Cli::try_parse_from(["hub-emulator", "--service-key", key]);
        let cli = parse("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
        assert!(cli.service_key.is_some());
        let err = parse("not base64!").unwrap_err().to_string();
        assert!(
            err.contains("--service-key") && err.contains("not base64"),
            "{err}"
        );
    }

    /// Nothing listens beyond loopback unless asked to.
    #[test]
    fn every_listener_binds_loopback_by_default() {
        let cli = Cli::try_parse_from(["hub-emulator"]).unwrap();
        assert!(cli.mqtt_bind.is_none());
        for (addr, port) in [
            (default_mqtt_bind(true), 8883),
            (default_mqtt_bind(false), 1883),
            (cli.service_bind, 8080),
            (cli.control_bind, 8081),
        ] {
            assert!(addr.ip().is_loopback(), "{addr}");
            assert_eq!(addr.port(), port);
        }
    }

    /// `--help` documents every flag: each argument of the command and of its subcommands has
    /// a help text (the integration test checks the rendered output names them).
    #[test]
    fn every_argument_has_help() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut commands = vec![&cmd];
        commands.extend(cmd.get_subcommands());
        for c in commands {
            for arg in c.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                assert!(
                    arg.get_help()
                        .is_some_and(|h| !h.to_string().trim().is_empty()),
                    "{} argument {id} has no help text",
                    c.get_name()
                );
            }
            assert!(
                c.get_about().is_some(),
                "{} has no about text",
                c.get_name()
            );
        }
    }
}
