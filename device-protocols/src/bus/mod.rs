//! The bus runtime: one task per bus (a serial line, a Modbus TCP endpoint, or RTU framing
//! over TCP) that polls its units and carries out writes.
//!
//! - One transaction at a time. Units take turns request by request (round robin), each unit
//!   on its own poll period; writes go before the next poll request.
//! - Offline rule: a poll request that gets no answer is retried once at once (after the
//!   other units' turn; [`BusConfig::offline_after`] attempts in all, default 2); the last
//!   miss reports the unit offline *and* ends its cycle and backs it off alone (exponential
//!   with jitter, capped, see [`crate::backoff`], never shorter than its poll period), in one
//!   health update. So a unit that stops answering is reported offline within the cycle in
//!   which it fell silent (within one poll period + 2 timeouts with the defaults), and a
//!   dead unit costs the line at most one timeout per backoff period. A unit answering only
//!   garbage (corrupted frames, after `garbage_retries` immediate retries) goes offline and
//!   is backed off the same way. A timeout during which bytes arrived that never formed a frame (bad
//!   CRC, wrong baud rate) is handled the same way but reported as a corrupted answer, not as
//!   silence. So are exceptions 0A/0B (gateway path unavailable, gateway target device failed
//!   to respond): a Modbus TCP gateway answers them for a device behind it that is absent.
//! - Other exceptions mean the unit is alive. A unit whose every read of a cycle is refused
//!   with an exception delivers no data: it is reported [`UnitStatus::Faulted`] and backed off
//!   like an offline unit until a read delivers data again. See [`UnitStatus`] for the rules.
//! - A late answer (after the timeout) is drained before the next request when it comes
//!   within the drain window; one that arrives later still is rejected by unit id, function
//!   code and length checks (the innocent unit's transaction counts one corrupted answer and
//!   is retried). Size the timeout for the slowest unit on the line.
//! - Exception 02 on a merged read (or 03 on a read merging several points: some devices
//!   answer 03 to reads that are too long for them) makes the unit's [`AdaptivePlanner`]
//!   split the request, retried in the same cycle; the split is remembered.
//! - A port or connection that fails (I/O error, EOF, unplugged USB adapter) is reopened with
//!   backoff and polling resumes by itself. Use `/dev/serial/by-id/…` paths: they survive
//!   replugging, `/dev/ttyUSBn` numbers do not.
//! - Writes: fc 5/6 (or 15/16 with `write_multiple`, and 16 for multi-register values), then a
//!   read-back of the point; bit points are read-modify-write.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use device_protocols::bus::{Bus, BusConfig, Transport, UnitConfig};
//! use device_protocols::point::{DataType, Point, Table, Value};
//! use device_protocols::serial::SerialSettings;
//! use std::time::Duration;
//!
//! let config = BusConfig::new("rs485-a", Transport::Serial(SerialSettings::new("/dev/ttyUSB0")));
//! let unit = UnitConfig::new(7, Duration::from_secs(5), vec![
//!     Point::new("setpoint", Table::Holding, 100, DataType::U16)?.with_writable(true),
//! ]);
//! let (bus, mut polls) = Bus::spawn(config, vec![unit])?;
//! let poll = polls.recv().await.expect("bus running");
//! let read_back = bus.write(7, "setpoint", Value::U64(215)).await?;
//! # Ok(()) }
//! ```

mod link;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_modbus::{Request, Response};

use crate::backoff::{Backoff, BackoffConfig};
use crate::codec::{self, DecodeError, EncodeError, WriteData};
use crate::health::{BusHealth, BusStatus, HealthTx, PortState, UnitHealth, UnitStatus};
use crate::heartbeat::{HEARTBEAT_EVERY, Heartbeat};
use crate::planner::{AdaptivePlanner, PlanIssue, PlanLimits, ReadRequest, SplitOutcome};
use crate::point::{Point, Table, Value};
use crate::serial::SerialSettings;

use link::{Link, TxError};

/// Largest register count of one fc 16 write.
pub const MAX_WRITE_REGISTERS: usize = 123;

/// What a bus talks over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Modbus RTU on a serial line.
    Serial(SerialSettings),
    /// Modbus TCP (MBAP framing) to `host:port`; the unit id selects the device behind a gateway.
    Tcp(String),
    /// RTU frames over a TCP connection to `host:port` (transparent serial device servers).
    RtuOverTcp(String),
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Serial(s) => write!(f, "serial {s}"),
            Self::Tcp(a) => write!(f, "modbus-tcp {a}"),
            Self::RtuOverTcp(a) => write!(f, "rtu-over-tcp {a}"),
        }
    }
}

/// Settings of one bus.
#[derive(Debug, Clone, PartialEq)]
pub struct BusConfig {
    /// Name for logs and health.
    pub name: String,
    /// Port or endpoint.
    pub transport: Transport,
    /// Per-request timeout (request sent → complete answer).
    pub timeout: Duration,
    /// Silence after each answer before the next request (many RS-485 devices need a few ms
    /// to release the line). The RTU inter-frame gap t3.5 is always kept on serial lines.
    pub turnaround: Duration,
    /// Backoff of a unit that went offline or is faulted (the delay is never shorter than
    /// the unit's poll period).
    pub unit_backoff: BackoffConfig,
    /// Backoff between attempts to reopen a lost port or connection.
    pub reopen_backoff: BackoffConfig,
    /// Transactions in a row without a valid answer (timeouts, corrupted answers, gateway
    /// exceptions 0A/0B) after which a unit is reported offline and backed off (minimum 1).
    /// A poll request that gets no answer is retried at once (after the other units' turn)
    /// until this is reached, so a unit that stops answering is reported offline within the
    /// cycle in which it fell silent: at most one poll period plus `offline_after` ×
    /// (`timeout` + turnaround, + one request of each other busy unit per retry) after its
    /// last answer. Default 2: one lost frame does not flap the unit's health.
    pub offline_after: u32,
    /// Immediate retries of a transaction whose answer was corrupted.
    pub garbage_retries: u32,
    /// Default planner limits (a unit may override them).
    pub limits: PlanLimits,
    /// Capacity of the poll event channel; events are dropped (and counted) when it is full.
    pub event_capacity: usize,
}

impl BusConfig {
    /// A bus with defaults: 500 ms timeout, no extra turnaround, unit backoff 1 s…60 s,
    /// reopen backoff 500 ms…30 s, offline after 2 transactions without a valid answer,
    /// one retry on garbage.
    pub fn new(name: impl Into<String>, transport: Transport) -> Self {
        Self {
            name: name.into(),
            transport,
            timeout: Duration::from_millis(500),
            turnaround: Duration::ZERO,
            unit_backoff: BackoffConfig::new(Duration::from_secs(1), Duration::from_mins(1)),
            reopen_backoff: BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(30)),
            offline_after: 2,
            garbage_retries: 1,
            limits: PlanLimits::default(),
            event_capacity: 1024,
        }
    }
}

/// One unit (slave id) on a bus.
#[derive(Debug, Clone)]
pub struct UnitConfig {
    /// Unit id 1–247 (0 is broadcast; on Modbus TCP 255 addresses the server itself).
    pub unit: u8,
    /// Poll period.
    pub poll: Duration,
    /// Points, names unique within the unit.
    pub points: Vec<Point>,
    /// Planner limits for this unit (`None`: the bus's).
    pub limits: Option<PlanLimits>,
}

impl UnitConfig {
    /// A unit with the bus's planner limits.
    pub fn new(unit: u8, poll: Duration, points: Vec<Point>) -> Self {
        Self {
            unit,
            poll,
            points,
            limits: None,
        }
    }

    /// Writes every point of the unit with fc 15/16, even single coils and registers (for
    /// devices without fc 5/6): sets [`Point::write_multiple`] on the points given so far.
    #[must_use]
    pub fn with_write_multiple(mut self, write_multiple: bool) -> Self {
        for p in &mut self.points {
            p.write_multiple = write_multiple;
        }
        self
    }

    /// Planner limits for this unit instead of the bus's (e.g. a device that reads at most
    /// 32 registers per request).
    #[must_use]
    pub fn with_limits(mut self, limits: PlanLimits) -> Self {
        self.limits = Some(limits);
        self
    }
}

/// Why a bus cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusConfigError {
    /// Unit id outside 1–247 (255 allowed on Modbus TCP).
    #[error("bus {bus}: unit id {unit} is not a device address (1–247)")]
    BadUnit {
        /// Bus.
        bus: String,
        /// Unit.
        unit: u8,
    },
    /// Same unit twice.
    #[error("bus {bus}: unit {unit} is configured twice")]
    DuplicateUnit {
        /// Bus.
        bus: String,
        /// Unit.
        unit: u8,
    },
    /// Same point name twice within a unit.
    #[error("bus {bus}: unit {unit}: point `{point}` is defined twice")]
    DuplicatePoint {
        /// Bus.
        bus: String,
        /// Unit.
        unit: u8,
        /// Point.
        point: String,
    },
    /// Zero poll period or timeout.
    #[error("bus {bus}: {what} must be greater than zero")]
    Zero {
        /// Bus.
        bus: String,
        /// Which setting.
        what: String,
    },
}

/// A Modbus exception code (the unit answered, and refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Exception(pub u8);

impl Exception {
    /// 02: illegal data address.
    pub const ILLEGAL_DATA_ADDRESS: Exception = Exception(2);
    /// 03: illegal data value (also used by some devices for reads that are too long).
    pub const ILLEGAL_DATA_VALUE: Exception = Exception(3);
    /// 0A: gateway path unavailable (the gateway has no route to the unit id).
    pub const GATEWAY_PATH_UNAVAILABLE: Exception = Exception(0x0A);
    /// 0B: gateway target device failed to respond (the device behind the gateway is silent).
    pub const GATEWAY_TARGET_FAILED: Exception = Exception(0x0B);

    /// 0A or 0B: a gateway answered on behalf of a device behind it that did not. Unlike the
    /// other exceptions this does not mean the unit is alive: the bus treats it like a
    /// timeout (offline, backed off) and [`crate::scan`] does not count it as found.
    pub fn is_gateway_no_response(self) -> bool {
        self == Self::GATEWAY_PATH_UNAVAILABLE || self == Self::GATEWAY_TARGET_FAILED
    }

    /// The standard name of the code.
    pub fn name(self) -> &'static str {
        match self.0 {
            0x01 => "illegal function",
            0x02 => "illegal data address",
            0x03 => "illegal data value",
            0x04 => "server device failure",
            0x05 => "acknowledge",
            0x06 => "server device busy",
            0x08 => "memory parity error",
            0x0A => "gateway path unavailable",
            0x0B => "gateway target device failed to respond",
            _ => "non-standard exception",
        }
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exception {:02X} ({})", self.0, self.name())
    }
}

/// Why a point has no value in a poll, or why a transaction failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PointError {
    /// No answer within the timeout.
    #[error("timeout")]
    Timeout,
    /// The unit answered with an exception.
    #[error("{0}")]
    Exception(Exception),
    /// Corrupted answer (CRC, garbage, wrong unit or function).
    #[error("corrupted answer: {0}")]
    Garbage(String),
    /// The port or connection failed.
    #[error("port: {0}")]
    Port(String),
    /// The registers could not be decoded.
    #[error("decoding: {0}")]
    Decode(#[from] DecodeError),
    /// The point cannot be read with the planner limits (configuration).
    #[error("not readable with the configured limits: {0}")]
    Unplannable(PlanIssue),
}

impl From<TxError> for PointError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Timeout => Self::Timeout,
            TxError::Exception(x) => Self::Exception(x),
            TxError::Garbage(m) | TxError::Unframed(m) => Self::Garbage(m),
            TxError::Port(m) => Self::Port(m),
        }
    }
}

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// No such unit on this bus.
    #[error("unit {0} is not on this bus")]
    UnknownUnit(u8),
    /// No such point on the unit.
    #[error("unit {unit}: no point named `{point}`")]
    UnknownPoint {
        /// Unit.
        unit: u8,
        /// Point.
        point: String,
    },
    /// The point is not marked writable.
    #[error("point `{0}` is not writable")]
    NotWritable(String),
    /// The value does not fit the point.
    #[error("point `{point}`: {source}")]
    Encode {
        /// Point.
        point: String,
        /// Why.
        source: EncodeError,
    },
    /// The write transaction failed (nothing, or possibly something, was written).
    #[error("point `{point}`: write failed: {source}")]
    Write {
        /// Point.
        point: String,
        /// Why.
        source: PointError,
    },
    /// Written, but the read-back failed.
    #[error("point `{point}`: written, but read-back failed: {source}")]
    ReadBack {
        /// Point.
        point: String,
        /// Why.
        source: PointError,
    },
    /// The bus task is gone.
    #[error("bus stopped")]
    BusStopped,
}

/// The result of reading one point.
#[derive(Debug, Clone, PartialEq)]
pub struct PointReading {
    /// Point name.
    pub name: Arc<str>,
    /// Value or why there is none.
    pub result: Result<Value, PointError>,
}

/// One poll cycle of one unit: every point once (or the points reached before the unit
/// timed out; the rest carry [`PointError::Timeout`]).
#[derive(Debug, Clone, PartialEq)]
pub struct UnitPoll {
    /// Unit id.
    pub unit: u8,
    /// Wall-clock time the cycle finished.
    pub at: SystemTime,
    /// Requests this cycle took.
    pub requests: u32,
    /// Readings in the unit's point order.
    pub readings: Vec<PointReading>,
}

impl UnitPoll {
    /// The reading of `name`.
    pub fn get(&self, name: &str) -> Option<&Result<Value, PointError>> {
        self.readings
            .iter()
            .find(|r| &*r.name == name)
            .map(|r| &r.result)
    }
}

enum Command {
    Write {
        unit: u8,
        point: String,
        value: Value,
        reply: oneshot::Sender<Result<Value, WriteError>>,
    },
    Read {
        unit: u8,
        point: String,
        reply: oneshot::Sender<Result<Value, WriteError>>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Entry point: [`Bus::spawn`].
#[derive(Debug)]
pub struct Bus;

/// Control of a running bus. Cheap to clone; the bus stops when every handle is dropped or
/// on [`BusHandle::shutdown`].
#[derive(Debug, Clone)]
pub struct BusHandle {
    commands: mpsc::Sender<Command>,
    health: watch::Receiver<BusHealth>,
    status: watch::Receiver<BusStatus>,
    heartbeat: Heartbeat,
}

impl Bus {
    /// Validates the configuration and starts the bus task on the current tokio runtime.
    /// Returns the handle and the stream of poll cycles.
    pub fn spawn(
        config: BusConfig,
        units: Vec<UnitConfig>,
    ) -> Result<(BusHandle, mpsc::Receiver<UnitPoll>), BusConfigError> {
        validate(&config, &units)?;
        let health = BusHealth {
            bus: config.name.clone(),
            port: PortState::Starting,
            opens: 0,
            events_dropped: 0,
            units: units.iter().map(|u| UnitHealth::new(u.unit)).collect(),
        };
        let (health_tx, health_rx, status_rx) = HealthTx::new(health);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (event_tx, event_rx) = mpsc::channel(config.event_capacity.max(1));
        let now = Instant::now();
        let states: Vec<UnitState> = units
            .into_iter()
            .map(|u| UnitState::new(u, &config, now))
            .collect();
        // As if the last unit had just been served: the first turn is the first unit's.
        let rr = states.len().saturating_sub(1);
        let heartbeat = Heartbeat::new();
        let runtime = Runtime {
            heartbeat: heartbeat.clone(),
            reopen: Backoff::new(config.reopen_backoff),
            config,
            units: states,
            link: None,
            health: health_tx,
            events: event_tx,
            commands: cmd_rx,
            rr,
            stopped_ack: None,
        };
        tokio::spawn(runtime.run());
        Ok((
            BusHandle {
                commands: cmd_tx,
                health: health_rx,
                status: status_rx,
                heartbeat,
            },
            event_rx,
        ))
    }
}

impl BusHandle {
    /// Writes `value` to `point` of `unit` and returns the value read back from the device.
    ///
    /// The read-back is in the point's precision: compare it with `value` using
    /// [`Point::same_value`] (or [`crate::codec::same_value`]), not `==` — an f32 point reads
    /// `0.1` back as `0.100000001490116…`, a point with scale 0.1 reads `22.45` back as `22.5`.
    pub async fn write(&self, unit: u8, point: &str, value: Value) -> Result<Value, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Write {
                unit,
                point: point.to_owned(),
                value,
                reply,
            })
            .await
            .map_err(|_| WriteError::BusStopped)?;
        rx.await.map_err(|_| WriteError::BusStopped)?
    }

    /// Reads one point now (between poll requests), e.g. for commissioning. Errors use
    /// [`WriteError`]'s lookup variants; a failed transaction is [`WriteError::ReadBack`].
    pub async fn read(&self, unit: u8, point: &str) -> Result<Value, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Read {
                unit,
                point: point.to_owned(),
                reply,
            })
            .await
            .map_err(|_| WriteError::BusStopped)?;
        rx.await.map_err(|_| WriteError::BusStopped)?
    }

    /// The latest health snapshot.
    pub fn health(&self) -> BusHealth {
        self.health.borrow().clone()
    }

    /// A receiver that is notified on every health change (every transaction).
    pub fn watch_health(&self) -> watch::Receiver<BusHealth> {
        self.health.clone()
    }

    /// The latest status: port up or down, each unit online / faulted / offline / unknown.
    pub fn status(&self) -> BusStatus {
        self.status.borrow().clone()
    }

    /// A receiver that is notified only when the status changes: the port goes down or comes
    /// back, or a unit's [`UnitStatus`] changes (it goes offline and is backed off, becomes
    /// faulted, answers again). It needs no poll events — a bus whose port is down, or a
    /// backed-off unit, sends none — so a bridge can mark devices offline from it alone.
    pub fn watch_status(&self) -> watch::Receiver<BusStatus> {
        self.status.clone()
    }

    /// The bus task's [`Heartbeat`]: stamped every time its loop goes round, at least every
    /// [`HEARTBEAT_EVERY`] when idle or waiting to reopen the port (plus one transaction's
    /// timeout while one is in progress). It stops when the task is stuck or ended.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Stops the bus task (closing the port) and waits for it.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn validate(config: &BusConfig, units: &[UnitConfig]) -> Result<(), BusConfigError> {
    let bus = || config.name.clone();
    if config.timeout.is_zero() {
        return Err(BusConfigError::Zero {
            bus: bus(),
            what: "timeout".into(),
        });
    }
    let tcp = matches!(config.transport, Transport::Tcp(_));
    let mut seen = HashSet::new();
    for u in units {
        if u.unit == 0 || (u.unit > 247 && !(tcp && u.unit == 255)) {
            return Err(BusConfigError::BadUnit {
                bus: bus(),
                unit: u.unit,
            });
        }
        if !seen.insert(u.unit) {
            return Err(BusConfigError::DuplicateUnit {
                bus: bus(),
                unit: u.unit,
            });
        }
        if u.poll.is_zero() {
            return Err(BusConfigError::Zero {
                bus: bus(),
                what: format!("unit {} poll period", u.unit),
            });
        }
        let mut names = HashSet::new();
        for p in &u.points {
            if !names.insert(p.name.as_str()) {
                return Err(BusConfigError::DuplicatePoint {
                    bus: bus(),
                    unit: u.unit,
                    point: p.name.clone(),
                });
            }
        }
    }
    Ok(())
}

struct Cycle {
    queue: VecDeque<ReadRequest>,
    results: Vec<Option<Result<Value, PointError>>>,
    started: Instant,
    requests: u32,
    /// Reads answered with data.
    answered: u32,
    /// Reads refused with an exception (other than 0A/0B).
    refused: u32,
}

/// How a cycle ended.
enum CycleEnd {
    /// Every planned request was attempted.
    Completed,
    /// Cut short (no answer, port lost): the points not reached carry this error.
    Aborted(PointError),
}

struct UnitState {
    unit: u8,
    poll: Duration,
    points: Vec<Point>,
    names: Vec<Arc<str>>,
    by_name: HashMap<String, usize>,
    planner: AdaptivePlanner,
    backoff: Backoff,
    /// Set by [`Runtime::tally`] when a poll transaction took the unit offline: wait this
    /// long before the next cycle.
    backed_off: Option<Duration>,
    next_due: Instant,
    cycle: Option<Cycle>,
}

impl UnitState {
    fn new(cfg: UnitConfig, bus: &BusConfig, now: Instant) -> Self {
        let limits = cfg.limits.unwrap_or(bus.limits);
        Self {
            unit: cfg.unit,
            poll: cfg.poll,
            names: cfg
                .points
                .iter()
                .map(|p| Arc::from(p.name.as_str()))
                .collect(),
            by_name: cfg
                .points
                .iter()
                .enumerate()
                .map(|(i, p)| (p.name.clone(), i))
                .collect(),
            planner: AdaptivePlanner::for_points(&cfg.points, limits),
            points: cfg.points,
            backoff: Backoff::new(bus.unit_backoff),
            backed_off: None,
            next_due: now,
            cycle: None,
        }
    }

    fn start_cycle(&mut self, now: Instant) {
        let plan = self.planner.plan();
        let mut results = vec![None; self.points.len()];
        for (i, issue) in &plan.unplannable {
            results[*i] = Some(Err(PointError::Unplannable(issue.clone())));
        }
        self.cycle = Some(Cycle {
            queue: plan.requests.iter().cloned().collect(),
            results,
            started: now,
            requests: 0,
            answered: 0,
            refused: 0,
        });
    }
}

/// Outcome of one transaction for health bookkeeping.
enum Tally<'a> {
    Success,
    Failure(&'a TxError),
}

struct Runtime {
    config: BusConfig,
    units: Vec<UnitState>,
    link: Option<Link>,
    reopen: Backoff,
    health: HealthTx,
    events: mpsc::Sender<UnitPoll>,
    commands: mpsc::Receiver<Command>,
    /// Round-robin position: index of the unit served last.
    rr: usize,
    /// Who asked for the shutdown, told once the port is closed.
    stopped_ack: Option<oneshot::Sender<()>>,
    /// Stamped every round of the loop (see [`BusHandle::heartbeat`]).
    heartbeat: Heartbeat,
}

impl Runtime {
    async fn run(mut self) {
        let name = self.config.name.clone();
        tracing::info!(bus = %name, transport = %self.config.transport, units = self.units.len(), "bus starting");
        loop {
            self.heartbeat.beat();
            if self.link.is_none() && !self.open_link().await {
                break;
            }
            // Writes first: they are rare and a person may be waiting.
            match self.commands.try_recv() {
                Ok(cmd) => {
                    if !self.handle(cmd).await {
                        break;
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            for u in &mut self.units {
                if u.cycle.is_none() && u.next_due <= now {
                    u.start_cycle(now);
                }
            }
            if let Some(idx) = self.next_active() {
                self.rr = idx;
                self.step(idx).await;
                continue;
            }
            // Idle: wake at least every HEARTBEAT_EVERY to show the loop is alive.
            let beat_due = Instant::now() + HEARTBEAT_EVERY;
            let wake = self
                .units
                .iter()
                .map(|u| u.next_due)
                .min()
                .map_or(beat_due, |t| t.min(beat_due));
            let sleep = tokio::time::sleep_until(wake);
            tokio::select! {
                () = sleep => {}
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => if !self.handle(cmd).await { break },
                    None => break,
                },
            }
        }
        self.link = None;
        self.health.modify(|h| h.port = PortState::Stopped);
        tracing::info!(bus = %name, "bus stopped");
        if let Some(ack) = self.stopped_ack.take() {
            let _ = ack.send(());
        }
    }

    /// The next unit with a cycle in progress, round robin after the last one served.
    fn next_active(&self) -> Option<usize> {
        let n = self.units.len();
        (1..=n)
            .map(|k| (self.rr + k) % n)
            .find(|&i| self.units[i].cycle.is_some())
    }

    /// Opens the link, retrying with backoff while answering commands. False: stop.
    async fn open_link(&mut self) -> bool {
        loop {
            match link::open(
                &self.config.transport,
                self.config.timeout,
                self.config.turnaround,
            )
            .await
            {
                Ok(link) => {
                    tracing::info!(bus = %self.config.name, "port open");
                    self.link = Some(link);
                    self.reopen.reset();
                    let now = Instant::now();
                    for u in &mut self.units {
                        // Poll everything soon after a reopen, backed-off units included:
                        // a replug often brings them all back.
                        u.next_due = u.next_due.min(now);
                    }
                    self.health.modify(|h| {
                        h.port = PortState::Open;
                        h.opens += 1;
                    });
                    return true;
                }
                Err(error) => {
                    let attempts = self.reopen.failures() + 1;
                    let delay = self.reopen.next_delay();
                    // Once per outage at warn; the retries are expected until it comes back.
                    if attempts == 1 {
                        tracing::warn!(bus = %self.config.name, %error, retry_in = ?delay, "cannot open port");
                    } else {
                        tracing::debug!(bus = %self.config.name, %error, attempts, retry_in = ?delay, "cannot open port");
                    }
                    self.health.modify(|h| {
                        h.port = PortState::Down {
                            error: error.clone(),
                            attempts,
                        };
                        for u in &mut h.units {
                            u.online = false;
                            u.status = UnitStatus::Offline;
                        }
                    });
                    let deadline = Instant::now() + delay;
                    loop {
                        self.heartbeat.beat();
                        if Instant::now() >= deadline {
                            break;
                        }
                        let wake = deadline.min(Instant::now() + HEARTBEAT_EVERY);
                        tokio::select! {
                            () = tokio::time::sleep_until(wake) => {},
                            cmd = self.commands.recv() => match cmd {
                                Some(
                                    Command::Write { reply, point, .. }
                                    | Command::Read { reply, point, .. },
                                ) => {
                                    let _ = reply.send(Err(WriteError::Write {
                                        point,
                                        source: PointError::Port(error.clone()),
                                    }));
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
            }
        }
    }

    /// Handles a command. False: stop.
    async fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Write {
                unit,
                point,
                value,
                reply,
            } => {
                let result = self.write(unit, &point, &value).await;
                let _ = reply.send(result);
                true
            }
            Command::Read { unit, point, reply } => {
                let result = self.read_one(unit, &point).await;
                let _ = reply.send(result);
                true
            }
            Command::Shutdown(done) => {
                self.stopped_ack = Some(done);
                false
            }
        }
    }

    /// One transaction, with retries on corrupted answers and health bookkeeping. `poll`:
    /// the transaction belongs to the unit's poll cycle (which is backed off when it takes the
    /// unit offline), not to a write or one-shot read.
    async fn transact(
        &mut self,
        idx: usize,
        request: Request<'static>,
        poll: bool,
    ) -> Result<Response, TxError> {
        let unit = self.units[idx].unit;
        // A write is never sent twice: its garbled answer may hide that the unit applied it
        // (a late answer to an earlier request, e.g. of a killed predecessor on the line,
        // arrives first), and a desired version must reach the device at most once.
        let retry_garbage = !matches!(
            request,
            Request::WriteSingleCoil(..)
                | Request::WriteMultipleCoils(..)
                | Request::WriteSingleRegister(..)
                | Request::WriteMultipleRegisters(..)
                | Request::MaskWriteRegister(..)
                | Request::ReadWriteMultipleRegisters(..)
        );
        let mut attempts = 0;
        loop {
            self.heartbeat.beat();
            let Some(link) = self.link.as_mut() else {
                return Err(TxError::Port("port not open".into()));
            };
            let result = link.call(unit, request.clone()).await.map_err(|e| match e {
                // Name the port: the OS error alone ("Input/output error") does not.
                TxError::Port(m) => TxError::Port(format!("{}: {m}", self.config.transport)),
                other => other,
            });
            match &result {
                Ok(_) => self.tally(idx, &Tally::Success, poll),
                Err(e) => self.tally(idx, &Tally::Failure(e), poll),
            }
            match result {
                Err(TxError::Garbage(_))
                    if retry_garbage && attempts < self.config.garbage_retries =>
                {
                    attempts += 1;
                }
                Err(TxError::Port(error)) => {
                    self.port_lost(&error);
                    return Err(TxError::Port(error));
                }
                other => return other,
            }
        }
    }

    /// Health bookkeeping of one transaction. A poll transaction without an answer that
    /// reaches `offline_after` also backs the unit off, in the same health update (so that a
    /// watcher never sees an offline unit without its backoff), and leaves the delay in
    /// [`UnitState::backed_off`] for [`Runtime::step`].
    fn tally(&mut self, idx: usize, outcome: &Tally<'_>, poll: bool) {
        let offline_after = self.config.offline_after.max(1);
        let bus = &self.config.name;
        let state = &mut self.units[idx];
        self.health.modify(|h| {
            let u = &mut h.units[idx];
            u.transactions += 1;
            match outcome {
                Tally::Success => {
                    u.successes += 1;
                    u.online = true;
                    u.status = UnitStatus::Online;
                    u.last_success = Some(SystemTime::now());
                    u.consecutive_errors = 0;
                    u.consecutive_timeouts = 0;
                    u.consecutive_unanswered = 0;
                    u.backoff = None;
                    state.backed_off = None;
                }
                Tally::Failure(e) => {
                    u.consecutive_errors += 1;
                    u.last_error = Some(PointError::from((*e).clone()).to_string());
                    match e {
                        TxError::Timeout => {
                            u.timeouts += 1;
                            u.consecutive_timeouts += 1;
                            u.consecutive_unanswered += 1;
                        }
                        TxError::Exception(x) if x.is_gateway_no_response() => {
                            // The gateway answered, the device behind it did not.
                            u.gateway_errors += 1;
                            u.consecutive_unanswered += 1;
                        }
                        TxError::Exception(_) => {
                            // Alive. Whether it is online or faulted is decided when its
                            // cycle completes (did any read deliver data?).
                            u.exceptions += 1;
                            u.consecutive_timeouts = 0;
                            u.consecutive_unanswered = 0;
                        }
                        TxError::Garbage(_) | TxError::Unframed(_) => {
                            u.crc_errors += 1;
                            u.consecutive_unanswered += 1;
                        }
                        TxError::Port(_) => {
                            u.online = false;
                            u.status = UnitStatus::Offline;
                        }
                    }
                    if u.consecutive_unanswered >= offline_after && u.status != UnitStatus::Offline
                    {
                        // Debug: users log status changes from `watch_status` (with their own
                        // names for units, and rate-limited against flapping).
                        tracing::debug!(bus = %bus, modbus_unit = u.unit, last_error = ?u.last_error,
                            "unit offline after {} transactions without a valid answer",
                            u.consecutive_unanswered);
                        u.online = false;
                        u.status = UnitStatus::Offline;
                    }
                    // Offline means backed off, whether silent or only babbling garbage (once
                    // per poll request: garbage retries do not double the delay).
                    let unanswered = e.is_no_answer() || matches!(e, TxError::Garbage(_));
                    if poll
                        && unanswered
                        && u.consecutive_unanswered >= offline_after
                        && state.backed_off.is_none()
                    {
                        let delay = state.backoff.next_delay().max(state.poll);
                        state.backed_off = Some(delay);
                        u.backoff = Some(delay);
                    }
                }
            }
        });
    }

    fn port_lost(&mut self, error: &str) {
        tracing::warn!(bus = %self.config.name, %error, "port lost; reopening");
        self.link = None;
        self.health.modify(|h| {
            h.port = PortState::Down {
                error: error.to_owned(),
                attempts: 0,
            };
            for u in &mut h.units {
                u.online = false;
                u.status = UnitStatus::Offline;
            }
        });
        // Cycles in progress end now, with the rest of their points failed.
        for idx in 0..self.units.len() {
            if self.units[idx].cycle.is_some() {
                self.finish_cycle(idx, CycleEnd::Aborted(PointError::Port(error.to_owned())));
            }
        }
    }

    /// Runs the next request of unit `idx`'s cycle.
    async fn step(&mut self, idx: usize) {
        let Some(req) = self.units[idx]
            .cycle
            .as_mut()
            .and_then(|c| c.queue.pop_front())
        else {
            self.finish_cycle(idx, CycleEnd::Completed);
            return;
        };
        if let Some(c) = self.units[idx].cycle.as_mut() {
            c.requests += 1;
        }
        let result = self.transact(idx, read_request(&req), true).await;
        // The port may have been lost: the cycle was then finished by `port_lost`.
        if self.units[idx].cycle.is_none() {
            return;
        }
        let u = &mut self.units[idx];
        let cycle = u.cycle.as_mut().expect("checked above");
        match result {
            Ok(response) => {
                for &p in &req.points {
                    cycle.results[p] = Some(decode_point(&u.points[p], &req, &response));
                }
                cycle.answered += 1;
                u.backoff.reset();
            }
            Err(e) if e.is_no_answer() && u.backed_off.is_none() => {
                // A unit that was answering missed one: retry the request (after the other
                // units' turns) before declaring it offline, so that one lost frame does not
                // flap its health, while a dead unit is reported offline within this cycle.
                tracing::debug!(modbus_unit = u.unit, error = %PointError::from(e), "no answer; retrying");
                cycle.queue.push_front(req);
                return;
            }
            Err(e) if e.is_no_answer() => {
                // Offline (and backed off by `tally`): a dead (or unintelligible) unit costs
                // one timeout per backoff period. End its cycle now.
                let delay = u.backed_off.take().unwrap_or(u.poll);
                self.finish_cycle(idx, CycleEnd::Aborted(PointError::from(e)));
                self.units[idx].next_due = Instant::now() + delay;
                return;
            }
            Err(TxError::Exception(code)) if splits_on(code, &req, &u.points) => {
                cycle.refused += 1;
                match u.planner.on_illegal_address(&req) {
                    SplitOutcome::Retry(parts) => {
                        tracing::debug!(
                            modbus_unit = u.unit,
                            address = req.address,
                            count = req.count,
                            parts = parts.len(),
                            "{code} on merged read; splitting"
                        );
                        for part in parts.into_iter().rev() {
                            cycle.queue.push_front(part);
                        }
                    }
                    SplitOutcome::Unreadable(points) => {
                        for p in points {
                            cycle.results[p] = Some(Err(PointError::Exception(code)));
                        }
                    }
                }
            }
            Err(e @ TxError::Garbage(_)) if u.backed_off.is_some() => {
                // Only corrupted answers, offline (and backed off by `tally`): end the cycle.
                let delay = u.backed_off.take().unwrap_or(u.poll);
                self.finish_cycle(idx, CycleEnd::Aborted(PointError::from(e)));
                self.units[idx].next_due = Instant::now() + delay;
                return;
            }
            Err(e) => {
                if matches!(e, TxError::Exception(_)) {
                    cycle.refused += 1;
                }
                let e = PointError::from(e);
                for &p in &req.points {
                    cycle.results[p] = Some(Err(e.clone()));
                }
            }
        }
        if cycle.queue.is_empty() {
            self.finish_cycle(idx, CycleEnd::Completed);
        }
    }

    /// Ends unit `idx`'s cycle, filling points not reached with the abort error, settles
    /// whether a unit that answered is online or faulted, and emits the cycle.
    fn finish_cycle(&mut self, idx: usize, end: CycleEnd) {
        let u = &mut self.units[idx];
        let Some(cycle) = u.cycle.take() else { return };
        let now = Instant::now();
        u.next_due = (cycle.started + u.poll).max(now);
        // Every read refused with an exception: the unit is there but delivers no data.
        let faulted =
            matches!(end, CycleEnd::Completed) && cycle.answered == 0 && cycle.refused > 0;
        let delivered = matches!(end, CycleEnd::Completed) && cycle.answered > 0;
        let missing = match end {
            CycleEnd::Completed => PointError::Timeout,
            CycleEnd::Aborted(e) => e,
        };
        let faulted_delay = faulted.then(|| u.backoff.next_delay().max(u.poll));
        if let Some(delay) = faulted_delay {
            u.next_due = now + delay;
        }
        let (unit, bus) = (u.unit, &self.config.name);
        self.health.modify(|h| {
            let uh = &mut h.units[idx];
            if let Some(delay) = faulted_delay {
                if uh.status != UnitStatus::Faulted {
                    // Debug, as for offline units: users log it from `watch_status`.
                    tracing::debug!(bus = %bus, modbus_unit = unit, last_error = ?uh.last_error,
                        "unit faulted: every read of its cycle was refused with an exception");
                }
                uh.online = true;
                uh.status = UnitStatus::Faulted;
                uh.backoff = Some(delay);
            } else if delivered {
                uh.online = true;
                uh.status = UnitStatus::Online;
            }
        });
        let u = &mut self.units[idx];
        let readings = cycle
            .results
            .into_iter()
            .zip(&u.names)
            .map(|(r, name)| PointReading {
                name: Arc::clone(name),
                result: r.unwrap_or_else(|| Err(missing.clone())),
            })
            .collect();
        let poll = UnitPoll {
            unit: u.unit,
            at: SystemTime::now(),
            requests: cycle.requests,
            readings,
        };
        let dropped = matches!(
            self.events.try_send(poll),
            Err(mpsc::error::TrySendError::Full(_))
        );
        self.health.modify(|h| {
            h.units[idx].poll_cycles += 1;
            if dropped {
                h.events_dropped += 1;
            }
        });
    }

    /// Finds a point: (unit index, point index).
    fn lookup(&self, unit: u8, name: &str) -> Result<(usize, usize), WriteError> {
        let idx = self
            .units
            .iter()
            .position(|u| u.unit == unit)
            .ok_or(WriteError::UnknownUnit(unit))?;
        let &p = self.units[idx]
            .by_name
            .get(name)
            .ok_or_else(|| WriteError::UnknownPoint {
                unit,
                point: name.to_owned(),
            })?;
        Ok((idx, p))
    }

    /// Reads one point outside the poll plan.
    async fn read_one(&mut self, unit: u8, name: &str) -> Result<Value, WriteError> {
        let (idx, p) = self.lookup(unit, name)?;
        self.read_point(idx, p).await
    }

    /// Reads point `p` of unit slot `idx` alone (explicit reads and write read-backs).
    async fn read_point(&mut self, idx: usize, p: usize) -> Result<Value, WriteError> {
        let point = self.units[idx].points[p].clone();
        let req = ReadRequest {
            table: point.table,
            address: point.address,
            count: point.count(),
            points: vec![p],
        };
        self.transact(idx, read_request(&req), false)
            .await
            .map_err(PointError::from)
            .and_then(|response| decode_point(&point, &req, &response))
            .map_err(|source| WriteError::ReadBack {
                point: point.name.clone(),
                source,
            })
    }

    /// Encodes, writes, reads back.
    async fn write(&mut self, unit: u8, name: &str, value: &Value) -> Result<Value, WriteError> {
        let (idx, p) = self.lookup(unit, name)?;
        let point = self.units[idx].points[p].clone();
        if !point.writable {
            return Err(WriteError::NotWritable(point.name));
        }
        let data = codec::encode(&point, value).map_err(|source| WriteError::Encode {
            point: point.name.clone(),
            source,
        })?;
        let write_failed = |source: PointError| WriteError::Write {
            point: point.name.clone(),
            source,
        };
        let request = match data {
            WriteData::Coil(b) if point.write_multiple => {
                Request::WriteMultipleCoils(point.address, vec![b].into())
            }
            WriteData::Coil(b) => Request::WriteSingleCoil(point.address, b),
            WriteData::Bit { bit, set } => {
                let current = match self
                    .transact(idx, Request::ReadHoldingRegisters(point.address, 1), false)
                    .await
                {
                    Ok(Response::ReadHoldingRegisters(r)) if !r.is_empty() => r[0],
                    Ok(other) => {
                        return Err(write_failed(PointError::Garbage(format!(
                            "unexpected response {other:?}"
                        ))));
                    }
                    Err(e) => return Err(write_failed(e.into())),
                };
                let reg = codec::apply_bit(current, bit, set);
                if point.write_multiple {
                    Request::WriteMultipleRegisters(point.address, vec![reg].into())
                } else {
                    Request::WriteSingleRegister(point.address, reg)
                }
            }
            WriteData::Registers(regs) if regs.len() == 1 && !point.write_multiple => {
                Request::WriteSingleRegister(point.address, regs[0])
            }
            WriteData::Registers(regs) => {
                if regs.len() > MAX_WRITE_REGISTERS {
                    return Err(WriteError::Encode {
                        point: point.name.clone(),
                        source: EncodeError::StringTooLong {
                            len: regs.len() * 2,
                            max: (MAX_WRITE_REGISTERS * 2) as u16,
                        },
                    });
                }
                Request::WriteMultipleRegisters(point.address, regs.into())
            }
        };
        self.transact(idx, request, false)
            .await
            .map_err(|e| write_failed(e.into()))?;
        self.read_point(idx, p).await
    }
}

/// Whether an exception answer to the read `req` makes the planner split it: 02 (illegal data
/// address) always, and 03 (illegal data value) when the request merges points of different
/// extents — some devices answer 03 to a read that is too long for them or that spans an
/// undefined register. A single point refused with 03 is just reported.
fn splits_on(code: Exception, req: &ReadRequest, points: &[Point]) -> bool {
    let extent = |p: usize| (points[p].address, points[p].count());
    code == Exception::ILLEGAL_DATA_ADDRESS
        || (code == Exception::ILLEGAL_DATA_VALUE
            && req
                .points
                .iter()
                .any(|&p| extent(p) != extent(req.points[0])))
}

fn read_request(req: &ReadRequest) -> Request<'static> {
    match req.table {
        Table::Coil => Request::ReadCoils(req.address, req.count),
        Table::DiscreteInput => Request::ReadDiscreteInputs(req.address, req.count),
        Table::Holding => Request::ReadHoldingRegisters(req.address, req.count),
        Table::Input => Request::ReadInputRegisters(req.address, req.count),
    }
}

/// Decodes `point` from the answer to `req` (which covers it).
fn decode_point(
    point: &Point,
    req: &ReadRequest,
    response: &Response,
) -> Result<Value, PointError> {
    let offset = usize::from(point.address - req.address);
    match response {
        Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) => Ok(codec::decode_bits(
            point,
            bits.get(offset..).unwrap_or(&[]),
        )?),
        Response::ReadHoldingRegisters(regs) | Response::ReadInputRegisters(regs) => Ok(
            codec::decode_registers(point, regs.get(offset..).unwrap_or(&[]))?,
        ),
        other => Err(PointError::Garbage(format!(
            "unexpected response {other:?}"
        ))),
    }
}
