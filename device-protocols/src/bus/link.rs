//! One physical link (serial port or TCP connection) and single Modbus transactions on it.
//!
//! Framing and CRC are tokio-modbus's. This layer adds what tokio-modbus lacks: a timeout on
//! every call, pacing between frames (t3.5 and the device turnaround delay), draining stale
//! bytes after a timeout or a corrupted answer, and a fresh client context after every failed
//! transaction — tokio-modbus's framed stream reports a decode error once and then ends, so a
//! context is never reused after an error. The transport itself is shared with the context
//! ([`SharedIo`]) so that a new context needs no reopen.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_modbus::client::{Client as _, Context};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::{Request, Response, Slave};

use super::{Exception, Transport};
use crate::timer::PreciseTimer;

/// Anything a Modbus client can run over.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A transport shared between the link and the (replaceable) tokio-modbus context. Only one
/// of them uses it at a time, so the lock is never contended. Counts the bytes received, so
/// that a timeout with bytes on the line can be told from silence, and notes the end of the
/// stream: tokio-modbus' TCP client reports a peer's close as whatever `errno` happens to hold
/// (e.g. "Operation now in progress (os error 115)"), so the link says what happened itself.
#[derive(Clone)]
struct SharedIo(Arc<Mutex<Box<dyn Io>>>, Arc<AtomicU64>, Arc<AtomicBool>);

impl std::fmt::Debug for SharedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedIo")
    }
}

impl SharedIo {
    fn with<R>(&self, f: impl FnOnce(Pin<&mut (dyn Io + 'static)>) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(Pin::new(&mut **guard))
    }
}

impl AsyncRead for SharedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let poll = self.with(|io| io.poll_read(cx, buf));
        let received = buf.filled().len() - before;
        self.1.fetch_add(received as u64, Ordering::Relaxed);
        if room && received == 0 && matches!(poll, Poll::Ready(Ok(()))) {
            // A read with room that completes empty is the end of the stream.
            self.2.store(true, Ordering::Relaxed);
        }
        poll
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|io| io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.with(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.with(|io| io.poll_shutdown(cx))
    }
}

/// How one transaction failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxError {
    /// No answer within the timeout: the line stayed silent.
    Timeout,
    /// No answer within the timeout, but bytes arrived that did not form a valid frame (bad
    /// CRC, noise, wrong baud rate or parity). tokio-modbus' decoder resynchronises byte by
    /// byte instead of failing, so a corrupted short answer ends as a timeout; this tells it
    /// from silence. Costs the line a full timeout, like [`TxError::Timeout`].
    Unframed(String),
    /// The unit answered with an exception.
    Exception(Exception),
    /// The answer was corrupted (CRC, garbage, wrong unit or function).
    Garbage(String),
    /// The port or connection failed; the link must be reopened.
    Port(String),
}

impl TxError {
    /// The unit did not answer: silence, bytes that never formed a frame, or a gateway's
    /// 0A/0B exception on its behalf. Counts towards offline and backs the unit off.
    pub(crate) fn is_no_answer(&self) -> bool {
        match self {
            Self::Timeout | Self::Unframed(_) => true,
            Self::Exception(x) => x.is_gateway_no_response(),
            Self::Garbage(_) | Self::Port(_) => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Rtu,
    Tcp,
}

/// An open link.
pub(crate) struct Link {
    io: SharedIo,
    framing: Framing,
    ctx: Option<Context>,
    timeout: Duration,
    /// Minimum silence before sending: max(t3.5, turnaround).
    gap: Duration,
    /// Keeps `gap` to the microsecond rather than tokio's millisecond (see [`crate::timer`]).
    timer: PreciseTimer,
    last_activity: Instant,
    /// Bytes may still be arriving from an earlier transaction.
    dirty: bool,
    /// What the end of the stream means on this transport.
    closed: &'static str,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("framing", &self.framing)
            .field("timeout", &self.timeout)
            .field("gap", &self.gap)
            .finish_non_exhaustive()
    }
}

/// Opens the transport (serial port or TCP connection, within `timeout` for TCP).
pub(crate) async fn open(
    transport: &Transport,
    timeout: Duration,
    turnaround: Duration,
) -> Result<Link, String> {
    let closed = match transport {
        Transport::Serial(_) => "port closed (end of stream: device gone?)",
        Transport::Tcp(_) | Transport::RtuOverTcp(_) => "connection closed by peer",
    };
    let (io, framing, gap): (Box<dyn Io>, Framing, Duration) = match transport {
        Transport::Serial(settings) => {
            let stream = crate::serial::open(settings).map_err(|e| e.to_string())?;
            (
                Box::new(crate::serial::NoDrain(stream)),
                Framing::Rtu,
                settings.inter_frame_gap().max(turnaround),
            )
        }
        Transport::Tcp(addr) | Transport::RtuOverTcp(addr) => {
            let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| format!("connecting to {addr}: timed out after {timeout:?}"))?
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            // Requests are tiny and latency-bound.
            stream
                .set_nodelay(true)
                .map_err(|e| format!("connecting to {addr}: setting TCP_NODELAY: {e}"))?;
            let framing = if matches!(transport, Transport::Tcp(_)) {
                Framing::Tcp
            } else {
                Framing::Rtu
            };
            (Box::new(stream), framing, turnaround)
        }
    };
    Ok(Link {
        io: SharedIo(
            Arc::new(Mutex::new(io)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        ),
        framing,
        ctx: None,
        timeout,
        gap,
        timer: PreciseTimer::new(),
        last_activity: Instant::now(),
        dirty: false,
        closed,
    })
}

impl Link {
    /// Runs one transaction with `unit`: pacing, timeout, error classification.
    pub(crate) async fn call(
        &mut self,
        unit: u8,
        request: Request<'_>,
    ) -> Result<Response, TxError> {
        if self.dirty {
            self.drain().await?;
        }
        // Never less than `gap` after the last byte in or out, and no more than the timer's
        // wake-up latency beyond it.
        self.timer.sleep_until(self.last_activity + self.gap).await;
        let io = self.io.clone();
        let framing = self.framing;
        let ctx = self.ctx.get_or_insert_with(|| match framing {
            Framing::Rtu => tokio_modbus::client::rtu::attach_slave(io, Slave(unit)),
            Framing::Tcp => tokio_modbus::client::tcp::attach_slave(io, Slave(unit)),
        });
        ctx.set_slave(Slave(unit));
        let expected = expected_len(&request);
        let received_before = self.io.1.load(Ordering::Relaxed);
        let result = tokio::time::timeout(self.timeout, ctx.call(request)).await;
        self.last_activity = Instant::now();
        let outcome = match result {
            Err(_elapsed) => match self.io.1.load(Ordering::Relaxed) - received_before {
                0 => Err(TxError::Timeout),
                n => Err(TxError::Unframed(format!(
                    "no valid answer within {:?}, {n} bytes that do not form a frame \
                     (bad CRC? check baud rate, parity, wiring)",
                    self.timeout
                ))),
            },
            Ok(Ok(Ok(response))) => match (expected, response_len(&response)) {
                // RTU answers carry no transaction id: a late answer to an earlier request
                // of the same unit and function would otherwise pass for this one.
                (Some(want), Some(got)) if got != want => Err(TxError::Garbage(format!(
                    "answer holds {got} values, {want} were asked for (a late answer?)"
                ))),
                _ => return Ok(response),
            },
            Ok(Ok(Err(code))) => return Err(TxError::Exception(Exception(u8::from(code)))),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(TxError::Garbage(e.to_string())),
            Ok(Err(tokio_modbus::Error::Transport(e)))
                if e.kind() == io::ErrorKind::InvalidData =>
            {
                Err(TxError::Garbage(e.to_string()))
            }
            Ok(Err(tokio_modbus::Error::Transport(_))) if self.io.2.load(Ordering::Relaxed) => {
                Err(TxError::Port(self.closed.to_owned()))
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => Err(TxError::Port(port_error(&e))),
        };
        // Never reuse a context after a failure (see the module docs), and let stale bytes of
        // a late or corrupted answer drain before the next request.
        self.ctx = None;
        self.dirty = true;
        outcome
    }

    /// Reads and discards bytes until the line has been quiet for a moment (bounded by the
    /// timeout, so a babbling line cannot stall the bus).
    async fn drain(&mut self) -> Result<(), TxError> {
        let quiet = self.gap.max(Duration::from_millis(20));
        let deadline = Instant::now() + self.timeout;
        let mut buf = [0u8; 256];
        let mut io = self.io.clone();
        loop {
            let until = (Instant::now() + quiet).min(deadline);
            match tokio::time::timeout_at(until, io.read(&mut buf)).await {
                Err(_quiet) => break,
                Ok(Ok(0)) => return Err(TxError::Port(self.closed.to_owned())),
                Ok(Ok(_)) if Instant::now() >= deadline => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(TxError::Port(port_error(&e))),
            }
        }
        self.dirty = false;
        self.last_activity = Instant::now();
        Ok(())
    }
}

/// Values a read answer must hold: the registers asked for, or the bits asked for rounded up
/// to whole bytes (tokio-modbus decodes every bit of the answer's bytes).
fn expected_len(request: &Request<'_>) -> Option<usize> {
    match request {
        Request::ReadCoils(_, n) | Request::ReadDiscreteInputs(_, n) => {
            Some(usize::from(*n).div_ceil(8) * 8)
        }
        Request::ReadHoldingRegisters(_, n) | Request::ReadInputRegisters(_, n) => {
            Some(usize::from(*n))
        }
        _ => None,
    }
}

/// Values a read answer holds.
fn response_len(response: &Response) -> Option<usize> {
    match response {
        Response::ReadHoldingRegisters(r) | Response::ReadInputRegisters(r) => Some(r.len()),
        Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) => Some(b.len()),
        _ => None,
    }
}

fn port_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => {
            format!("connection closed ({e})")
        }
        _ => e.to_string(),
    }
}
