//! The line-device runtime: one task that owns a serial port, reads readings from it, sends
//! command lines to it, and reopens it with backoff when it disappears.
//!
//! The port is reopened like a bus's ([`crate::bus`]): the first attempt right away, then with
//! [`Backoff`] from [`LineDeviceConfig::reopen_backoff`]; the state is published as a
//! [`PortState`]. The backoff starts over only once a reopened port has delivered a line or
//! taken a command, so a port that opens and fails at once is not reopened in a spin. A line
//! cut short by the unplug is dropped with the old port.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_serial::SerialStream;

use super::{
    LineCounters, LineError, LineReader, LineSettings, Reading, Template, TemplateError, write_line,
};
use crate::backoff::{Backoff, BackoffConfig};
use crate::health::PortState;
use crate::serial::{self, NoDrain, SerialError, SerialSettings};

/// Settings of one line device on its own serial port.
#[derive(Debug, Clone, PartialEq)]
pub struct LineDeviceConfig {
    /// Name for logs, health and errors.
    pub name: String,
    /// The port; prefer `/dev/serial/by-id/…` paths (see [`crate::serial`]).
    pub serial: SerialSettings,
    /// Reading format and line ending.
    pub line: LineSettings,
    /// Backoff between attempts to reopen a lost port.
    pub reopen_backoff: BackoffConfig,
    /// Longest a command write may take (a port that does not drain fails the write).
    pub write_timeout: Duration,
    /// Capacity of the readings channel; readings are dropped (and counted) when it is full,
    /// so a slow consumer never holds up commands or the port.
    pub capacity: usize,
}

impl LineDeviceConfig {
    /// A device with defaults: reopen backoff 500 ms…30 s (as a bus), 1 s write timeout,
    /// 256 queued readings.
    pub fn new(name: impl Into<String>, serial: SerialSettings, line: LineSettings) -> Self {
        Self {
            name: name.into(),
            serial,
            line,
            reopen_backoff: BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(30)),
            write_timeout: Duration::from_secs(1),
            capacity: 256,
        }
    }
}

/// A snapshot of a line device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineHealth {
    /// Device name.
    pub device: String,
    /// The port's path.
    pub path: PathBuf,
    /// Port state; `Down { attempts }` counts the failed reopen attempts since it went down.
    pub port: PortState,
    /// Times the port was (re)opened successfully.
    pub opens: u64,
    /// Failed open attempts over the device's lifetime.
    pub open_failures: u64,
    /// Why the port was last lost (read or write error, end of stream), naming the port.
    pub last_loss: Option<String>,
    /// Lines, readings and malformed lines over the device's lifetime (across reopens).
    pub counters: LineCounters,
    /// Wall-clock time of the last reading.
    pub last_reading: Option<SystemTime>,
    /// Readings dropped because the consumer did not keep up.
    pub readings_dropped: u64,
    /// Command lines written.
    pub writes: u64,
    /// Command writes that failed (port down, I/O error, timeout).
    pub write_errors: u64,
}

/// Why a command was not (completely) written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineWriteError {
    /// The template could not be rendered; nothing was sent.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The port is down (being reopened); nothing was sent.
    #[error("line device {device}: port down, command not sent: {error}")]
    PortDown {
        /// Device.
        device: String,
        /// Why the port is down (names the port).
        error: String,
    },
    /// Writing failed; the port is reopened. Part of the line may have gone out.
    #[error("line device {device}: {error}")]
    Io {
        /// Device.
        device: String,
        /// The I/O error (names the port).
        error: String,
    },
    /// The port did not take the line in time. Part of it may have gone out.
    #[error("line device {device}: writing to serial port {}: timed out after {timeout:?}", path.display())]
    Timeout {
        /// Device.
        device: String,
        /// The port.
        path: PathBuf,
        /// The configured write timeout.
        timeout: Duration,
    },
    /// The device task is gone.
    #[error("line device stopped")]
    Stopped,
}

enum Command {
    Write {
        line: String,
        reply: oneshot::Sender<Result<(), LineWriteError>>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Entry point: [`LineDevice::spawn`].
#[derive(Debug)]
pub struct LineDevice;

/// Control of a running line device. Cheap to clone; the device stops (closing the port)
/// when every handle is dropped or on [`LineDeviceHandle::shutdown`].
#[derive(Debug, Clone)]
pub struct LineDeviceHandle {
    commands: mpsc::Sender<Command>,
    health: watch::Receiver<LineHealth>,
}

impl LineDevice {
    /// Checks the serial settings and starts the device task on the current tokio runtime.
    /// Returns the handle and the stream of readings. A port that cannot be opened yet is not
    /// an error: it is retried with backoff (see [`LineHealth::port`]).
    pub fn spawn(
        config: LineDeviceConfig,
    ) -> Result<(LineDeviceHandle, mpsc::Receiver<Reading>), SerialError> {
        config.serial.validate()?;
        let health = LineHealth {
            device: config.name.clone(),
            path: config.serial.path.clone(),
            port: PortState::Starting,
            opens: 0,
            open_failures: 0,
            last_loss: None,
            counters: LineCounters::default(),
            last_reading: None,
            readings_dropped: 0,
            writes: 0,
            write_errors: 0,
        };
        let (health_tx, health_rx) = watch::channel(health);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (readings_tx, readings_rx) = mpsc::channel(config.capacity.max(1));
        let runtime = Runtime {
            reopen: Backoff::new(config.reopen_backoff),
            config,
            reader: None,
            counters: LineCounters::default(),
            health: health_tx,
            readings: readings_tx,
            commands: cmd_rx,
            stopped_ack: None,
        };
        tokio::spawn(runtime.run());
        Ok((
            LineDeviceHandle {
                commands: cmd_tx,
                health: health_rx,
            },
            readings_rx,
        ))
    }
}

impl LineDeviceHandle {
    /// Renders `template` with `vars` and writes the line to the device.
    pub async fn write(
        &self,
        template: &Template,
        vars: &Map<String, Value>,
    ) -> Result<(), LineWriteError> {
        let line = template.render(vars)?;
        self.write_line(line).await
    }

    /// Renders the common `{name}` / `{value}` template and writes the line.
    pub async fn write_set(
        &self,
        template: &Template,
        name: &str,
        value: &Value,
    ) -> Result<(), LineWriteError> {
        let line = template.render_set(name, value)?;
        self.write_line(line).await
    }

    /// Writes `line` as is (include the line ending). Returns once it is written, or at once
    /// with [`LineWriteError::PortDown`] while the port is down.
    pub async fn write_line(&self, line: impl Into<String>) -> Result<(), LineWriteError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Write {
                line: line.into(),
                reply,
            })
            .await
            .map_err(|_| LineWriteError::Stopped)?;
        rx.await.map_err(|_| LineWriteError::Stopped)?
    }

    /// The latest health snapshot.
    pub fn health(&self) -> LineHealth {
        self.health.borrow().clone()
    }

    /// A receiver that is notified on every health change.
    pub fn watch_health(&self) -> watch::Receiver<LineHealth> {
        self.health.clone()
    }

    /// Stops the device task (closing the port) and waits for it.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Runtime {
    config: LineDeviceConfig,
    /// The open port, `None` while it is down.
    reader: Option<LineReader<NoDrain<SerialStream>>>,
    /// Counters carried over while the port is down, handed to the next reader.
    counters: LineCounters,
    reopen: Backoff,
    health: watch::Sender<LineHealth>,
    readings: mpsc::Sender<Reading>,
    commands: mpsc::Receiver<Command>,
    /// Who asked for the shutdown, told once the port is closed.
    stopped_ack: Option<oneshot::Sender<()>>,
}

impl Runtime {
    async fn run(mut self) {
        let name = self.config.name.clone();
        tracing::info!(device = %name, port = %self.config.serial, "line device starting");
        loop {
            if self.reader.is_none() && !self.open().await {
                break;
            }
            let reader = self.reader.as_mut().expect("opened above");
            tokio::select! {
                // Commands first: they are rare and someone is waiting.
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Write { line, reply }) => {
                        let result = self.write(&line).await;
                        let _ = reply.send(result);
                    }
                    Some(Command::Shutdown(done)) => {
                        self.stopped_ack = Some(done);
                        break;
                    }
                    None => break,
                },
                // Cancel-safe (see `LineReader::next_line`): a command loses no reading.
                next = reader.next_line() => self.on_read(next),
            }
        }
        self.reader = None;
        self.health.send_modify(|h| h.port = PortState::Stopped);
        tracing::info!(device = %name, "line device stopped");
        if let Some(ack) = self.stopped_ack.take() {
            let _ = ack.send(());
        }
    }

    fn on_read(&mut self, next: std::io::Result<Option<Result<Reading, LineError>>>) {
        let counters = self
            .reader
            .as_ref()
            .map(|r| r.counters().clone())
            .unwrap_or_default();
        if counters.lines > self.health.borrow().counters.lines {
            self.proven();
        }
        match next {
            Ok(Some(Err(_malformed))) => {
                self.health.send_modify(|h| h.counters = counters);
            }
            Ok(Some(Ok(reading))) => {
                let dropped = matches!(
                    self.readings.try_send(reading),
                    Err(mpsc::error::TrySendError::Full(_))
                );
                self.health.send_modify(|h| {
                    h.counters = counters;
                    h.last_reading = Some(SystemTime::now());
                    if dropped {
                        h.readings_dropped += 1;
                    }
                });
            }
            Ok(None) => {
                self.health.send_modify(|h| h.counters = counters);
                self.port_lost("end of stream (device closed)");
            }
            Err(e) => {
                self.health.send_modify(|h| h.counters = counters);
                self.port_lost(&e.to_string());
            }
        }
    }

    /// Closes the port after a read or write error; the main loop reopens it.
    fn port_lost(&mut self, error: &str) {
        let error = format!("serial port {}: {error}", self.config.serial.path.display());
        tracing::warn!(device = %self.config.name, %error, "port lost; reopening");
        if let Some(reader) = self.reader.take() {
            self.counters = reader.counters().clone();
        }
        self.health.send_modify(|h| {
            h.last_loss = Some(error.clone());
            h.port = PortState::Down { error, attempts: 0 };
        });
    }

    /// Writes one command line on the open port.
    async fn write(&mut self, line: &str) -> Result<(), LineWriteError> {
        let device = self.config.name.clone();
        let Some(reader) = self.reader.as_mut() else {
            return Err(self.port_down());
        };
        let timeout = self.config.write_timeout;
        let result = match tokio::time::timeout(timeout, write_line(reader.get_mut(), line)).await {
            Ok(Ok(())) => {
                self.proven();
                Ok(())
            }
            Ok(Err(e)) => {
                let error = format!(
                    "writing to serial port {}: {e}",
                    self.config.serial.path.display()
                );
                self.port_lost(&format!("writing: {e}"));
                Err(LineWriteError::Io { device, error })
            }
            Err(_elapsed) => Err(LineWriteError::Timeout {
                device,
                path: self.config.serial.path.clone(),
                timeout,
            }),
        };
        self.health.send_modify(|h| match result {
            Ok(()) => h.writes += 1,
            Err(_) => h.write_errors += 1,
        });
        result
    }

    /// The error for a command that arrives while the port is down.
    fn port_down(&self) -> LineWriteError {
        let error = match &self.health.borrow().port {
            PortState::Down { error, .. } => error.clone(),
            _ => format!("serial port {} not open", self.config.serial.path.display()),
        };
        LineWriteError::PortDown {
            device: self.config.name.clone(),
            error,
        }
    }

    /// Opens the port, retrying with backoff while failing commands fast. False: stop.
    async fn open(&mut self) -> bool {
        if self.reopen.failures() > 0 {
            // The last port was lost before it delivered a line or took a command: wait before
            // reopening, so that a port that opens and fails at once is not reopened in a spin.
            let delay = self.reopen.next_delay();
            if !self.wait_failing_commands(delay).await {
                return false;
            }
        }
        loop {
            match serial::open(&self.config.serial) {
                Ok(port) => {
                    tracing::info!(device = %self.config.name, "port open");
                    let counters = std::mem::take(&mut self.counters);
                    self.reader = Some(
                        LineReader::new(NoDrain(port), &self.config.line).with_counters(counters),
                    );
                    // The backoff is reset once the port proves itself (`proven`), not here.
                    self.health.send_modify(|h| {
                        h.port = PortState::Open;
                        h.opens += 1;
                    });
                    return true;
                }
                Err(e) => {
                    let error = e.to_string();
                    let attempts = self.reopen.failures() + 1;
                    let delay = self.reopen.next_delay();
                    // Once per outage at warn; the retries are expected until it comes back.
                    if attempts == 1 {
                        tracing::warn!(device = %self.config.name, %error, retry_in = ?delay, "cannot open port");
                    } else {
                        tracing::debug!(device = %self.config.name, %error, attempts, retry_in = ?delay, "cannot open port");
                    }
                    self.health.send_modify(|h| {
                        h.port = PortState::Down { error, attempts };
                        h.open_failures += 1;
                    });
                    if !self.wait_failing_commands(delay).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits `delay` while the port is down, failing write commands at once. False: stop.
    async fn wait_failing_commands(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Write { reply, .. }) => {
                        let err = self.port_down();
                        self.health.send_modify(|h| h.write_errors += 1);
                        let _ = reply.send(Err(err));
                    }
                    Some(Command::Shutdown(done)) => {
                        self.stopped_ack = Some(done);
                        return false;
                    }
                    None => return false,
                },
            }
        }
    }

    /// The open port works (it delivered a line or took a command): the next loss is
    /// retried at once and backs off from the start.
    fn proven(&mut self) {
        self.reopen.reset();
    }
}
