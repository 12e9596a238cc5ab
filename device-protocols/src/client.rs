//! One-shot Modbus master access for the technician's tools (`twinbridge scan`, `read`,
//! `write`): connect to a [`Transport`], read or write one typed point with the same codecs as
//! the bus, every request bounded by a timeout.
//!
//! Serial ports are opened like a bus opens them ([`crate::serial::open`]): a port a running
//! bus holds is refused at once with [`SerialError::InUse`] instead of interleaving two
//! masters' frames on one line.

use std::time::Duration;

use tokio_modbus::client::{Context, Reader as _, Writer as _};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::{ExceptionCode, Slave};

use crate::bus::Transport;
use crate::codec::{self, DecodeError, EncodeError, WriteData};
use crate::point::{Point, Table, Value};
use crate::serial::SerialError;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The serial port could not be opened ([`SerialError::InUse`]: a running bus, the
    /// twinbridge service, holds it).
    #[error(transparent)]
    Serial(SerialError),
    /// The TCP connection failed.
    #[error("connecting to {addr}: {source}")]
    Tcp {
        /// `host:port`.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection was not made in time.
    #[error("connecting to {addr}: timed out after {after:?}")]
    TcpTimeout {
        /// `host:port`.
        addr: String,
        /// The limit.
        after: Duration,
    },
}

/// Opens `transport` as a Modbus master: a serial port (exclusively and, if configured, in
/// RS-485 mode, like a bus opens it), a Modbus TCP or an RTU-over-TCP connection (made within
/// `connect_timeout`). Must run inside a tokio runtime.
pub async fn connect(
    transport: &Transport,
    connect_timeout: Duration,
) -> Result<Context, ConnectError> {
    match transport {
        Transport::Serial(settings) => match crate::serial::open(settings) {
            Ok(port) => Ok(tokio_modbus::client::rtu::attach(crate::serial::NoDrain(
                port,
            ))),
            Err(e) => Err(ConnectError::Serial(e)),
        },
        Transport::Tcp(addr) | Transport::RtuOverTcp(addr) => {
            let stream =
                tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| ConnectError::TcpTimeout {
                        addr: addr.clone(),
                        after: connect_timeout,
                    })?
                    .map_err(|source| ConnectError::Tcp {
                        addr: addr.clone(),
                        source,
                    })?;
            // Requests are tiny and latency-bound.
            stream
                .set_nodelay(true)
                .map_err(|source| ConnectError::Tcp {
                    addr: addr.clone(),
                    source,
                })?;
            Ok(if matches!(transport, Transport::Tcp(_)) {
                tokio_modbus::client::tcp::attach(stream)
            } else {
                tokio_modbus::client::rtu::attach(stream)
            })
        }
    }
}

/// Why a one-shot request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No complete answer within the timeout.
    #[error("no answer from unit {unit} within {after:?}")]
    Timeout {
        /// The unit asked.
        unit: u8,
        /// The limit.
        after: Duration,
    },
    /// The unit answered with an exception.
    #[error("unit {unit} answered exception {:02X} ({code})", u8::from(*code))]
    Exception {
        /// The unit asked.
        unit: u8,
        /// Its exception.
        code: ExceptionCode,
    },
    /// The answer was corrupted, or the port or connection failed.
    #[error("unit {unit}: {source}")]
    Transport {
        /// The unit asked.
        unit: u8,
        /// What tokio-modbus reported.
        #[source]
        source: tokio_modbus::Error,
    },
    /// The value cannot be written to this point.
    #[error("cannot encode the value: {0}")]
    Encode(#[from] EncodeError),
    /// The answer does not decode as this point.
    #[error("cannot decode the answer: {0}")]
    Decode(#[from] DecodeError),
}

/// Runs one request on `ctx` for `unit` within `timeout`.
async fn request<T>(
    unit: u8,
    timeout: Duration,
    call: impl std::future::Future<Output = tokio_modbus::Result<T>>,
) -> Result<T, RequestError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(RequestError::Timeout {
            unit,
            after: timeout,
        }),
        Ok(Err(source)) => Err(RequestError::Transport { unit, source }),
        Ok(Ok(Err(code))) => Err(RequestError::Exception { unit, code }),
        Ok(Ok(Ok(v))) => Ok(v),
    }
}

/// A point's raw content as read: registers, or bits for the bit tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw {
    /// Registers, as received.
    Registers(Vec<u16>),
    /// Bits (coils, discrete inputs).
    Bits(Vec<bool>),
}

/// Reads `point` from `unit` (one request of the point's size) and decodes it.
pub async fn read_point(
    ctx: &mut Context,
    unit: u8,
    point: &Point,
    timeout: Duration,
) -> Result<(Value, Raw), RequestError> {
    ctx.set_slave(Slave(unit));
    let (address, count) = (point.address, point.count());
    match point.table {
        Table::Holding | Table::Input => {
            let regs = if point.table == Table::Holding {
                request(unit, timeout, ctx.read_holding_registers(address, count)).await?
            } else {
                request(unit, timeout, ctx.read_input_registers(address, count)).await?
            };
            let value = codec::decode_registers(point, &regs)?;
            Ok((value, Raw::Registers(regs)))
        }
        Table::Coil | Table::DiscreteInput => {
            let mut bits = if point.table == Table::Coil {
                request(unit, timeout, ctx.read_coils(address, count)).await?
            } else {
                request(unit, timeout, ctx.read_discrete_inputs(address, count)).await?
            };
            // Bits come padded to whole bytes.
            bits.truncate(usize::from(count));
            let value = codec::decode_bits(point, &bits)?;
            Ok((value, Raw::Bits(bits)))
        }
    }
}

/// Writes `value` to `point` on `unit` (fc 5/6, or 15/16 for multi-register values and
/// `write_multiple` points; a bit of a register by read-modify-write), then reads the point
/// back; returns what the read-back decodes to.
pub async fn write_point(
    ctx: &mut Context,
    unit: u8,
    point: &Point,
    value: &Value,
    timeout: Duration,
) -> Result<Value, RequestError> {
    let data = codec::encode(point, value)?;
    ctx.set_slave(Slave(unit));
    let address = point.address;
    match data {
        WriteData::Coil(on) if point.write_multiple => {
            request(unit, timeout, ctx.write_multiple_coils(address, &[on])).await?;
        }
        WriteData::Coil(on) => {
            request(unit, timeout, ctx.write_single_coil(address, on)).await?;
        }
        WriteData::Registers(regs) if regs.len() == 1 && !point.write_multiple => {
            request(unit, timeout, ctx.write_single_register(address, regs[0])).await?;
        }
        WriteData::Registers(regs) => {
            request(unit, timeout, ctx.write_multiple_registers(address, &regs)).await?;
        }
        WriteData::Bit { bit, set } => {
            let current = request(unit, timeout, ctx.read_holding_registers(address, 1)).await?;
            let current = current.first().copied().unwrap_or_default();
            let next = codec::apply_bit(current, bit, set);
            request(unit, timeout, ctx.write_single_register(address, next)).await?;
        }
    }
    read_point(ctx, unit, point, timeout)
        .await
        .map(|(value, _)| value)
}
