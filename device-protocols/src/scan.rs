//! Bus scan: which unit ids answer on a line.
//!
//! Each id in the range gets one probe request with a short timeout. A normal answer *and an
//! exception answer* both mean a device is there (it decoded the request and replied) —
//! except exceptions 0A (gateway path unavailable) and 0B (gateway target device failed to
//! respond): a Modbus TCP gateway answers those itself for an id with no device behind it,
//! so they mean *absent*. A garbled answer (bad CRC, wrong unit or function in the reply)
//! means *something* is there but the line settings may be wrong, and is reported separately.
//!
//! [`scan_port`] opens the port or connection of a [`Transport`] (the bus's own type), scans
//! and closes it again; a serial port a running bus holds is refused ([`ScanError::PortInUse`]).
//! [`scan_until`] stops early (Ctrl-C) with the results so far. [`scan`] drives a tokio-modbus client [`Context`] you opened yourself,
//! on RTU (serial or pty), RTU over TCP or Modbus TCP alike.
//!
//! A scan cannot share a line with a running [`crate::bus::Bus`]: two masters on one RS-485
//! line (or two opens of one serial port) interleave their frames and each takes the other's
//! answers for garbage, and a transparent serial device server (RTU over TCP) usually serves
//! one connection at a time. Stop the bus first ([`crate::bus::BusHandle::shutdown`]), scan,
//! then start it again. (A Modbus TCP gateway may accept a second connection, but its serial
//! side still serves one request at a time, so scanning slows the bus down.)

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, ProtocolError, Slave};

use crate::bus::Transport;

/// How long connecting to a TCP endpoint for [`scan_port`] may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The request sent to each id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "function", rename_all = "snake_case", deny_unknown_fields)]
pub enum Probe {
    /// fc 3.
    ReadHolding {
        /// First register.
        address: u16,
        /// Registers (1..=125).
        count: u16,
    },
    /// fc 4.
    ReadInput {
        /// First register.
        address: u16,
        /// Registers (1..=125).
        count: u16,
    },
    /// fc 1.
    ReadCoils {
        /// First coil.
        address: u16,
        /// Coils (1..=2000).
        count: u16,
    },
    /// fc 2.
    ReadDiscreteInputs {
        /// First input.
        address: u16,
        /// Inputs (1..=2000).
        count: u16,
    },
}

impl Default for Probe {
    /// Read holding register 0, count 1: every device answers it, with data or exception 02.
    fn default() -> Self {
        Probe::ReadHolding {
            address: 0,
            count: 1,
        }
    }
}

/// How to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanSettings {
    /// Unit ids to probe, in order (default 1..=247).
    pub units: RangeInclusive<u8>,
    /// How long to wait for each answer (default 100 ms; at 9600 baud a short reply takes
    /// about 8 ms on the wire, plus the device's own reaction time).
    pub timeout: Duration,
    /// The request.
    pub probe: Probe,
    /// Pause after each probe (turnaround for slow devices; default none).
    pub pause: Duration,
}

impl Default for ScanSettings {
    fn default() -> Self {
        Self {
            units: 1..=247,
            timeout: Duration::from_millis(100),
            probe: Probe::default(),
            pause: Duration::ZERO,
        }
    }
}

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// A normal answer.
    Answered,
    /// An exception answer (the device is there).
    Exception(ExceptionCode),
    /// Exception 0A or 0B: a gateway answered that no device behind it responds to this id
    /// (the device is absent).
    GatewayNoResponse(ExceptionCode),
    /// Bytes came back but did not decode as this unit's answer.
    Garbled,
    /// Nothing within the timeout.
    Silent,
}

impl ProbeOutcome {
    /// A device answered properly (data or exception).
    pub fn is_present(self) -> bool {
        matches!(self, ProbeOutcome::Answered | ProbeOutcome::Exception(_))
    }
}

/// Progress of a scan, reported after each probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanProgress {
    /// The id just probed.
    pub unit: u8,
    /// Its outcome.
    pub outcome: ProbeOutcome,
    /// Probes done so far (including this one).
    pub done: usize,
    /// Probes in the whole scan.
    pub total: usize,
}

/// The result of a scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Ids that answered (data or exception), ascending.
    pub found: Vec<u8>,
    /// Ids whose answer was garbled (check baud rate, parity, wiring, duplicate ids).
    pub garbled: Vec<u8>,
    /// The scan was stopped before the end of the range ([`scan_until`]): the lists hold
    /// what was found up to then.
    pub interrupted: bool,
}

/// Errors that end a scan early.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The port or connection could not be opened ([`scan_port`]).
    #[error("bus scan: cannot open {transport}: {error}")]
    Open {
        /// The port or endpoint.
        transport: String,
        /// Why.
        error: String,
    },
    /// A running bus (the twinbridge service) holds the serial port ([`scan_port`]).
    #[error("bus scan: port {} is in use by the running twinbridge service", path.display())]
    PortInUse {
        /// The port.
        path: std::path::PathBuf,
    },
    /// The transport failed (port unplugged, connection closed).
    #[error("bus scan stopped at unit {unit}: {source}")]
    Transport {
        /// The id being probed.
        unit: u8,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

async fn probe_once(ctx: &mut Context, probe: Probe) -> tokio_modbus::Result<()> {
    match probe {
        Probe::ReadHolding { address, count } => ctx
            .read_holding_registers(address, count)
            .await
            .map(|r| r.map(drop)),
        Probe::ReadInput { address, count } => ctx
            .read_input_registers(address, count)
            .await
            .map(|r| r.map(drop)),
        Probe::ReadCoils { address, count } => {
            ctx.read_coils(address, count).await.map(|r| r.map(drop))
        }
        Probe::ReadDiscreteInputs { address, count } => ctx
            .read_discrete_inputs(address, count)
            .await
            .map(|r| r.map(drop)),
    }
}

/// What to make of one probe's result.
#[derive(Debug)]
enum Classified {
    Outcome(ProbeOutcome),
    /// tokio-modbus' frame stream reports its own end (broken pipe) once after a decode
    /// error, then resumes: probe the same unit again (twice in a row: the stream is gone).
    RetryAfterPipe,
    /// The answer came from another unit (most likely the late answer of the previous,
    /// timed-out probe, which is consumed now): probe again (twice in a row: garbled).
    RetryAfterMismatch,
    Fatal(std::io::Error),
}

fn classify(result: Result<tokio_modbus::Result<()>, tokio::time::error::Elapsed>) -> Classified {
    match result {
        Err(_elapsed) => Classified::Outcome(ProbeOutcome::Silent),
        Ok(Ok(Ok(()))) => Classified::Outcome(ProbeOutcome::Answered),
        Ok(Ok(Err(
            code @ (ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice),
        ))) => Classified::Outcome(ProbeOutcome::GatewayNoResponse(code)),
        Ok(Ok(Err(code))) => Classified::Outcome(ProbeOutcome::Exception(code)),
        Ok(Err(tokio_modbus::Error::Protocol(ProtocolError::HeaderMismatch { .. }))) => {
            Classified::RetryAfterMismatch
        }
        Ok(Err(tokio_modbus::Error::Protocol(_))) => Classified::Outcome(ProbeOutcome::Garbled),
        Ok(Err(tokio_modbus::Error::Transport(e))) => match e.kind() {
            std::io::ErrorKind::InvalidData => Classified::Outcome(ProbeOutcome::Garbled),
            std::io::ErrorKind::BrokenPipe => Classified::RetryAfterPipe,
            _ => Classified::Fatal(e),
        },
    }
}

/// Opens `transport` (serial port, Modbus TCP or RTU-over-TCP endpoint), probes every id in
/// `settings.units`, calling `progress` after each probe, and closes the port or connection
/// again — also when the scan fails.
///
/// Not while a [`crate::bus::Bus`] runs on the same port or endpoint (see the module docs).
///
/// ```no_run
/// # async fn demo() -> Result<(), device_protocols::scan::ScanError> {
/// use device_protocols::bus::Transport;
/// use device_protocols::scan::{self, ScanSettings};
/// use device_protocols::serial::SerialSettings;
///
/// let port = Transport::Serial(SerialSettings::new("/dev/serial/by-id/usb-FTDI-if00-port0"));
/// let report = scan::scan_port(&port, &ScanSettings::default(), |p| {
///     eprintln!("{}/{}: unit {} {:?}", p.done, p.total, p.unit, p.outcome);
/// })
/// .await?;
/// println!("found {:?}, garbled {:?}", report.found, report.garbled);
/// # Ok(()) }
/// ```
pub async fn scan_port(
    transport: &Transport,
    settings: &ScanSettings,
    progress: impl FnMut(ScanProgress),
) -> Result<ScanReport, ScanError> {
    let mut ctx = open(transport).await?;
    let report = scan(&mut ctx, settings, progress).await;
    // Dropping the context closes the port too; disconnecting first also shuts a TCP
    // connection down cleanly. A failure here changes nothing about the scan's result.
    let _ = tokio_modbus::client::Client::disconnect(&mut ctx).await;
    drop(ctx);
    report
}

async fn open(transport: &Transport) -> Result<Context, ScanError> {
    crate::client::connect(transport, CONNECT_TIMEOUT)
        .await
        .map_err(|e| match e {
            crate::client::ConnectError::Serial(crate::serial::SerialError::InUse { path }) => {
                ScanError::PortInUse { path }
            }
            e => ScanError::Open {
                transport: transport.to_string(),
                error: e.to_string(),
            },
        })
}

/// Probes every id in `settings.units` on `ctx`, calling `progress` after each probe.
///
/// The context's unit id is left at the last probed id.
pub async fn scan(
    ctx: &mut Context,
    settings: &ScanSettings,
    progress: impl FnMut(ScanProgress),
) -> Result<ScanReport, ScanError> {
    scan_until(ctx, settings, std::future::pending(), progress).await
}

/// [`scan`] that stops early when `stop` completes (e.g. Ctrl-C): the probe in progress is
/// abandoned and the report holds what was found so far, with
/// [`ScanReport::interrupted`] set.
pub async fn scan_until(
    ctx: &mut Context,
    settings: &ScanSettings,
    stop: impl std::future::Future<Output = ()>,
    mut progress: impl FnMut(ScanProgress),
) -> Result<ScanReport, ScanError> {
    let total = settings.units.clone().count();
    let mut report = ScanReport::default();
    let mut stop = std::pin::pin!(stop);
    for (i, unit) in settings.units.clone().enumerate() {
        let probed = tokio::select! {
            biased;
            () = &mut stop => None,
            outcome = probe_unit(ctx, unit, settings) => Some(outcome?),
        };
        let Some(outcome) = probed else {
            report.interrupted = true;
            break;
        };
        match outcome {
            ProbeOutcome::Answered | ProbeOutcome::Exception(_) => report.found.push(unit),
            ProbeOutcome::Garbled => report.garbled.push(unit),
            ProbeOutcome::Silent | ProbeOutcome::GatewayNoResponse(_) => {}
        }
        progress(ScanProgress {
            unit,
            outcome,
            done: i + 1,
            total,
        });
        if !settings.pause.is_zero() {
            tokio::time::sleep(settings.pause).await;
        }
    }
    Ok(report)
}

/// Which tables `unit` answers: one read of `address`, count 1, per table, each within
/// `timeout`, in the order coil, discrete input, holding, input. An exception 01 (illegal
/// function) says the device lacks that table, 02 that it has none at that address.
pub async fn probe_tables(
    ctx: &mut Context,
    unit: u8,
    address: u16,
    timeout: Duration,
) -> Result<Vec<(crate::point::Table, ProbeOutcome)>, ScanError> {
    use crate::point::Table;
    let settings = |probe| ScanSettings {
        units: unit..=unit,
        timeout,
        probe,
        pause: Duration::ZERO,
    };
    let mut out = Vec::new();
    for (table, probe) in [
        (Table::Coil, Probe::ReadCoils { address, count: 1 }),
        (
            Table::DiscreteInput,
            Probe::ReadDiscreteInputs { address, count: 1 },
        ),
        (Table::Holding, Probe::ReadHolding { address, count: 1 }),
        (Table::Input, Probe::ReadInput { address, count: 1 }),
    ] {
        out.push((table, probe_unit(ctx, unit, &settings(probe)).await?));
    }
    Ok(out)
}

/// One probe of `unit`, with the retries [`Classified`] asks for.
async fn probe_unit(
    ctx: &mut Context,
    unit: u8,
    settings: &ScanSettings,
) -> Result<ProbeOutcome, ScanError> {
    {
        ctx.set_slave(Slave(unit));
        let mut retried = false;
        let outcome = loop {
            let result =
                tokio::time::timeout(settings.timeout, probe_once(ctx, settings.probe)).await;
            match classify(result) {
                Classified::Outcome(o) => break o,
                Classified::RetryAfterPipe | Classified::RetryAfterMismatch if !retried => {
                    retried = true;
                }
                Classified::RetryAfterMismatch => break ProbeOutcome::Garbled,
                Classified::RetryAfterPipe => {
                    let source = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
                    return Err(ScanError::Transport { unit, source });
                }
                Classified::Fatal(source) => return Err(ScanError::Transport { unit, source }),
            }
        };
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_classify() {
        let outcome = |r| match classify(r) {
            Classified::Outcome(o) => Some(o),
            _ => None,
        };
        assert_eq!(outcome(Ok(Ok(Ok(())))), Some(ProbeOutcome::Answered));
        assert_eq!(
            outcome(Ok(Ok(Err(ExceptionCode::IllegalDataAddress)))),
            Some(ProbeOutcome::Exception(ExceptionCode::IllegalDataAddress))
        );
        assert!(ProbeOutcome::Exception(ExceptionCode::ServerDeviceBusy).is_present());
        for code in [
            ExceptionCode::GatewayPathUnavailable,
            ExceptionCode::GatewayTargetDevice,
        ] {
            assert_eq!(
                outcome(Ok(Ok(Err(code)))),
                Some(ProbeOutcome::GatewayNoResponse(code))
            );
            assert!(!ProbeOutcome::GatewayNoResponse(code).is_present());
        }
        assert!(!ProbeOutcome::Garbled.is_present());
        let decode = std::io::Error::new(std::io::ErrorKind::InvalidData, "Invalid CRC");
        assert_eq!(outcome(Ok(Err(decode.into()))), Some(ProbeOutcome::Garbled));
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(matches!(
            classify(Ok(Err(pipe.into()))),
            Classified::RetryAfterPipe
        ));
        let gone = std::io::Error::from_raw_os_error(5);
        assert!(matches!(
            classify(Ok(Err(gone.into()))),
            Classified::Fatal(_)
        ));
    }

    #[test]
    fn probe_deserialises() {
        let p: Probe =
            toml::from_str("function = \"read_input\"\naddress = 30001\ncount = 2").unwrap();
        assert_eq!(
            p,
            Probe::ReadInput {
                address: 30001,
                count: 2
            }
        );
        assert_eq!(ScanSettings::default().units, 1..=247);
    }
}
