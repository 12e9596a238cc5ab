//! Per-unit and per-bus health, as published by the bus runtime; [`PortState`] also by the
//! line-device runtime ([`crate::line::LineDevice`]).

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How one unit (slave id) on a bus is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitHealth {
    /// Modbus unit (slave) id.
    pub unit: u8,
    /// The unit answers (any valid response, exceptions included). Goes false after
    /// `offline_after` transactions in a row that timed out or got only corrupted answers
    /// (a unit whose answers are all garbage delivers no data either), and while the port is
    /// down.
    pub online: bool,
    /// Wall-clock time of the last successful read.
    pub last_success: Option<SystemTime>,
    /// Failed transactions in a row (timeouts, garbage, exceptions, port errors).
    pub consecutive_errors: u32,
    /// Timeouts in a row.
    pub consecutive_timeouts: u32,
    /// Transactions in a row without a valid answer (timeouts and corrupted answers);
    /// reaching the bus's `offline_after` marks the unit offline. Any valid answer, an
    /// exception included, resets it.
    pub consecutive_unanswered: u32,
    /// Transactions attempted.
    pub transactions: u64,
    /// Transactions answered with data.
    pub successes: u64,
    /// Transactions that got no answer in time.
    pub timeouts: u64,
    /// Corrupted answers: bad CRC, garbage, answers from the wrong unit or function.
    pub crc_errors: u64,
    /// Exception responses (the unit is alive but refused).
    pub exceptions: u64,
    /// Complete poll cycles (every planned request attempted).
    pub poll_cycles: u64,
    /// The unit is backed off after timeouts; the next poll waits this long from the snapshot.
    pub backoff: Option<Duration>,
    /// The last error, human readable.
    pub last_error: Option<String>,
}

impl UnitHealth {
    /// A unit that has not been polled yet (reported offline until it answers).
    pub fn new(unit: u8) -> Self {
        Self {
            unit,
            online: false,
            last_success: None,
            consecutive_errors: 0,
            consecutive_timeouts: 0,
            consecutive_unanswered: 0,
            transactions: 0,
            successes: 0,
            timeouts: 0,
            crc_errors: 0,
            exceptions: 0,
            poll_cycles: 0,
            backoff: None,
            last_error: None,
        }
    }
}

/// The state of a bus's or line device's port or connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PortState {
    /// Not opened yet.
    Starting,
    /// Open and in use.
    Open,
    /// Lost or not openable; reopening with backoff.
    Down {
        /// Why.
        error: String,
        /// Failed open attempts since the port went down.
        attempts: u32,
    },
    /// The task ended ([`crate::bus::BusHandle::shutdown`],
    /// [`crate::line::LineDeviceHandle::shutdown`], or every handle dropped).
    Stopped,
}

/// A snapshot of a bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusHealth {
    /// Bus name.
    pub bus: String,
    /// Port / connection state.
    pub port: PortState,
    /// Times the port was (re)opened successfully.
    pub opens: u64,
    /// Poll events dropped because the consumer did not keep up.
    pub events_dropped: u64,
    /// Units in configuration order.
    pub units: Vec<UnitHealth>,
}

impl BusHealth {
    /// The health of `unit`, if it is on this bus.
    pub fn unit(&self, unit: u8) -> Option<&UnitHealth> {
        self.units.iter().find(|u| u.unit == unit)
    }
}
