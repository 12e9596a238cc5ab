//! What `scan`, `read` and `write` share: the PORT argument (a serial path with its line
//! settings, `tcp://host:port` or `rtu+tcp://host:port`), opening it, and the exit codes of
//! the field tools.
//!
//! Exit codes (sysexits.h): 0 done; 64 (`EX_USAGE`) a bad argument; 69 (`EX_UNAVAILABLE`) the
//! port cannot be opened or the device did not answer (or answered an exception); 75
//! (`EX_TEMPFAIL`) the port is in use by the running service (stop it and try again); 77
//! (`EX_NOPERM`) permission denied on the port; 130 a scan stopped by Ctrl-C (its results so
//! far are printed).

use std::io::Write;
use std::time::Duration;

use device_protocols::bus::Transport;
use device_protocols::client::{self, ConnectError, RequestError};
use device_protocols::serial::{Parity, SerialError, SerialSettings};
use tokio_modbus::client::Context;

use super::{EX_NOPERM, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE};

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The port and line settings every field tool takes.
#[derive(Debug, Clone, clap::Args)]
pub struct PortArgs {
    /// A serial port (e.g. /dev/serial/by-id/usb-FTDI_…-if00-port0, /dev/ttyUSB0),
    /// tcp://HOST:PORT (Modbus TCP) or rtu+tcp://HOST:PORT (RTU frames over TCP, a transparent
    /// serial device server).
    #[arg(value_name = "PORT")]
    pub port: String,
    /// Baud rate of a serial port.
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// Parity of a serial port: none, even or odd.
    #[arg(long, default_value = "none", value_parser = parse_parity)]
    pub parity: Parity,
    /// Stop bits of a serial port (1 or 2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub stop_bits: u8,
}

fn parse_parity(s: &str) -> Result<Parity, String> {
    match s.to_ascii_lowercase().as_str() {
        "none" | "n" => Ok(Parity::None),
        "even" | "e" => Ok(Parity::Even),
        "odd" | "o" => Ok(Parity::Odd),
        _ => Err(format!("`{s}` is not none, even or odd")),
    }
}

/// A duration like `100ms` or `2s`, for clap.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))
}

impl PortArgs {
    /// The transport PORT names.
    pub fn transport(&self) -> Result<Transport, String> {
        let endpoint = |rest: &str| {
            if rest
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
            {
                Ok(rest.to_owned())
            } else {
                Err(format!(
                    "{:?}: expected HOST:PORT after the scheme, e.g. tcp://10.0.0.5:502",
                    self.port
                ))
            }
        };
        if let Some(rest) = self.port.strip_prefix("tcp://") {
            return endpoint(rest).map(Transport::Tcp);
        }
        if let Some(rest) = self.port.strip_prefix("rtu+tcp://") {
            return endpoint(rest).map(Transport::RtuOverTcp);
        }
        if self.port.contains("://") {
            return Err(format!(
                "{:?}: expected a serial port path, tcp://HOST:PORT or rtu+tcp://HOST:PORT",
                self.port
            ));
        }
        Ok(Transport::Serial(SerialSettings {
            baud: self.baud,
            parity: self.parity,
            stop_bits: self.stop_bits,
            ..SerialSettings::new(&self.port)
        }))
    }
}

/// Connects to `transport`; on failure prints one line (with what to do) and returns the exit
/// code.
pub(crate) async fn connect(transport: &Transport, err: &mut dyn Write) -> Result<Context, u8> {
    client::connect(transport, CONNECT_TIMEOUT)
        .await
        .map_err(|e| report_connect_error(&e, err))
}

/// Prints a connect error and returns its exit code.
pub(crate) fn report_connect_error(e: &ConnectError, err: &mut dyn Write) -> u8 {
    match e {
        ConnectError::Serial(SerialError::InUse { path }) => {
            let _ = writeln!(err, "{}", in_use_message(&path.display().to_string()));
            EX_TEMPFAIL
        }
        ConnectError::Serial(e) if e.is_permission_denied() => {
            let _ = writeln!(
                err,
                "{e} (is this user in the dialout group? sudo usermod -aG dialout $USER)"
            );
            EX_NOPERM
        }
        e => {
            let _ = writeln!(err, "{e}");
            EX_UNAVAILABLE
        }
    }
}

/// The refusal of a port the service holds.
pub fn in_use_message(port: &str) -> String {
    format!(
        "port {port} is in use by the running twinbridge service; stop it first: systemctl stop twinbridge"
    )
}

/// Prints a request error and returns its exit code.
pub(crate) fn report_request_error(e: &RequestError, err: &mut dyn Write) -> u8 {
    let _ = writeln!(err, "{e}");
    match e {
        RequestError::Encode(_) => EX_USAGE,
        _ => EX_UNAVAILABLE,
    }
}

/// Runs `future` on a current-thread runtime (an error: the runtime cannot start; report
/// it with [`runtime_failed`]).
pub(crate) fn block_on(future: impl std::future::Future<Output = u8>) -> std::io::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}

/// Prints why the runtime did not start; exit 70 (`EX_SOFTWARE`).
pub(crate) fn runtime_failed(e: &std::io::Error, err: &mut dyn Write) -> u8 {
    let _ = writeln!(err, "starting the async runtime: {e}");
    super::EX_SOFTWARE
}
