//! The `twinbridge` binary: argument parsing only; the subcommands live in
//! `twinbridge::cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use twinbridge::cli;
use twinbridge::config::Config;

/// twinbridge: serial field devices <-> IoT Hub device twins, durable across outages.
#[derive(Debug, Parser)]
#[command(name = "twinbridge", version, about)]
struct Cli {
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help = "Configuration file; drop-ins are read from config.d/ beside it \
                [default: $TWINBRIDGE_CONFIG, else /etc/twinbridge/config.toml]"
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

/// Where systemd credentials are, for the subcommands that resolve keys.
#[derive(Debug, clap::Args)]
struct CredentialsArg {
    #[arg(
        long,
        value_name = "DIR",
        help = "Directory of systemd credentials (key files named after device ids, \
                group-key) [default: $CREDENTIALS_DIRECTORY]"
    )]
    credentials_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(
        about = "Run the agent: keep every device twin in sync with the hub until SIGTERM",
        after_help = "Example (systemd runs it so):\n  twinbridge run --config /etc/twinbridge/config.toml"
    )]
    Run {
        #[command(flatten)]
        credentials: CredentialsArg,
    },
    /// The whole mission on this machine: the hub emulator, simulated Modbus devices on two
    /// pseudo-terminal RS-485 lines and the real agent with a generated configuration. Shows
    /// each device's values, link and twin sync state while the script cuts the hub, unplugs
    /// a line and sets a desired value, and each time waits until every twin has converged.
    #[cfg(feature = "demo")]
    #[command(after_help = "Examples:\n  twinbridge demo\n  twinbridge demo --once --phase 5s")]
    Demo {
        /// Play the script once and exit (0 when every step converged).
        #[arg(long)]
        once: bool,
        /// How long the hub outage lasts while values change.
        #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
        phase: std::time::Duration,
    },
    /// Delete what the store keeps about a device removed from the configuration (its rows
    /// stay until then). The agent must be stopped.
    #[command(
        after_help = "Example (with the agent stopped):\n  systemctl stop twinbridge\n  twinbridge forget old-meter-07\n  systemctl start twinbridge"
    )]
    Forget {
        /// The device id.
        device: String,
        /// Do not ask (for scripts); without it, forget asks on a terminal and refuses
        /// without one.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Find the unit ids answering on a line, and which tables each answers. Progress on
    /// stderr; Ctrl-C stops with the results so far (exit 130). Exit 75 when the running
    /// service holds the port.
    #[command(
        after_help = "Examples:\n  twinbridge scan /dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0 --baud 19200 --parity even\n  twinbridge scan tcp://10.0.0.5:502 --units 1-10 --json | jq '.units[].unit'"
    )]
    Scan(cli::scan::ScanArgs),
    /// Read one typed value (or --count consecutive ones) from a unit, decoded like the
    /// configuration's points. Exit 75 when the running service holds the port, 69 when the
    /// unit does not answer or answers an exception.
    #[command(
        after_help = "Examples:\n  twinbridge read /dev/ttyUSB0 --baud 19200 --unit 1 --table input --address 0 --type f32 --order CDAB\n  twinbridge read tcp://10.0.0.5:502 --unit 7 --address 100 --scale 0.1 --count 4 --json"
    )]
    Read(cli::read_write::ReadArgs),
    /// Write one typed value to a unit (encoded like the configuration's points), read it
    /// back and print the read-back; exit 1 when the device holds another value.
    #[command(
        after_help = "Examples (with the service stopped):\n  twinbridge write /dev/ttyUSB0 --unit 7 --table holding --address 100 --type u16 215\n  twinbridge write tcp://10.0.0.5:502 --unit 1 --address 10 --type f32 --order CDAB -- -12.5"
    )]
    Write(cli::read_write::WriteArgs),
    /// Simulate Modbus devices on a fresh pseudo-terminal (default), a serial port or TCP;
    /// the first stdout line is where to connect. Same map file and fault options as
    /// modbus-sim. Runs until Ctrl-C or SIGTERM.
    #[command(
        after_help = "Examples:\n  twinbridge simulate --units 1,7      # prints e.g. /tmp/modbus-sim-4242.tty\n  twinbridge read \"$(twinbridge simulate --pty | head -n1)\" --unit 1 --address 0   # in another shell, with the path\n  twinbridge simulate --tcp 127.0.0.1:5020 --unit 1 --slow 1=300ms"
    )]
    Simulate(device_protocols::sim::cli::SimArgs),
    /// Per device: twin sync state, field link health, desired version and pending acks, read
    /// from the store (read-only: safe while the agent runs). Exit 69 when there is no store yet.
    #[command(
        after_help = "Examples:\n  twinbridge status\n  twinbridge status --json | jq '.devices[] | select(.sync.inSync | not)'"
    )]
    Status {
        /// Print JSON for scripts (stable field names) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Inspect one device's twin as the store holds it.
    #[command(after_help = "Example:\n  twinbridge twin show boiler-03")]
    Twin {
        #[command(subcommand)]
        command: TwinCommand,
    },
    #[command(
        about = "Check the configuration and the credentials it names; print every problem \
                 and exit 78 (EX_CONFIG) if there is one",
        after_help = "Example:\n  twinbridge check-config --config /etc/twinbridge/config.toml"
    )]
    CheckConfig {
        #[command(flatten)]
        credentials: CredentialsArg,
    },
}

#[derive(Debug, Subcommand)]
enum TwinCommand {
    /// The local reported document, what the hub holds ($version), the patch still to send,
    /// the desired document and version, acks per writable property and quarantined keys.
    #[command(
        after_help = "Examples:\n  twinbridge twin show boiler-03\n  twinbridge twin show boiler-03 --json | jq .pending"
    )]
    Show {
        /// The device id.
        device: String,
        /// Print JSON for scripts (stable field names).
        #[arg(long)]
        json: bool,
    },
}

// Streams are passed unlocked: a lock held for a whole subcommand would block every log line
// written from another thread (tracing writes to stderr).
fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = cli.config.unwrap_or_else(Config::default_path);
    let code = match cli.command {
        Command::Run { credentials } => {
            twinbridge::service::logging::init(twinbridge::service::logging::DEFAULT_LEVEL);
            cli::run::run(
                &config_path,
                cli::check_config::credentials_dir(credentials.credentials_dir).as_deref(),
                &mut std::io::stderr(),
            )
        }
        #[cfg(feature = "demo")]
        Command::Demo { once, phase } => {
            twinbridge::service::logging::init("warn");
            cli::demo::run(once, phase, &mut std::io::stderr())
        }
        Command::Forget { device, yes } => cli::forget::run(
            &config_path,
            &device,
            cli::forget::confirmation(yes),
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
        Command::Scan(args) => {
            cli::scan::run(&args, &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Read(args) => {
            cli::read_write::read(&args, &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Write(args) => {
            cli::read_write::write(&args, &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Simulate(args) => {
            cli::simulate::run(args, &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Status { json } => cli::status::run(
            &config_path,
            json,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
        Command::Twin {
            command: TwinCommand::Show { device, json },
        } => cli::twin_show::run(
            &config_path,
            &device,
            json,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
        Command::CheckConfig { credentials } => cli::check_config::run(
            &config_path,
            cli::check_config::credentials_dir(credentials.credentials_dir).as_deref(),
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
    };
    ExitCode::from(code)
}
