//! Per-unit and per-bus health, as published by the bus runtime; [`PortState`] also by the
//! line-device runtime ([`crate::line::LineDevice`]).
//!
//! [`BusHealth`] (from [`crate::bus::BusHandle::health`] / `watch_health`) changes with every
//! transaction: counters, errors, backoff. [`BusStatus`] (`status` / `watch_status`) is the
//! part a device twin reports — port up or down, each unit's [`UnitStatus`] — and changes only
//! when one of those does, with or without poll events.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// The one-word summary of a unit, meant for a device twin's reported health.
///
/// The rules (see also [`crate::bus`]):
///
/// - [`Online`](Self::Online): the unit delivers data — at least one read of its last poll
///   cycle (or the last transaction) was answered with data. Some points may still carry
///   exceptions.
/// - [`Faulted`](Self::Faulted): the unit answers, but every read of its last complete poll
///   cycle was refused with an exception (04 device failure, 06 busy, 02 on every point:
///   wrong register map or wrong device at this id). It delivers no data; it is backed off
///   like an offline unit, and `last_error` names the exception.
/// - [`Offline`](Self::Offline): `offline_after` transactions in a row without an answer
///   (timeouts, corrupted answers, and exception 0A/0B from a gateway, which says the device
///   behind it did not answer), or the port / connection is down.
/// - [`Unknown`](Self::Unknown): not polled yet (or only partly: no complete answer yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitStatus {
    /// Not polled yet.
    #[default]
    Unknown,
    /// Answers with data.
    Online,
    /// Answers, but only with exceptions: no data.
    Faulted,
    /// Does not answer, or cannot be reached (port down, gateway path unavailable).
    Offline,
}

impl UnitStatus {
    /// The lower-case name (`"online"`, `"faulted"`, `"offline"`, `"unknown"`), as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Online => "online",
            Self::Faulted => "faulted",
            Self::Offline => "offline",
        }
    }
}

impl std::fmt::Display for UnitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one unit (slave id) on a bus is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitHealth {
    /// Modbus unit (slave) id.
    pub unit: u8,
    /// The summary to report: online, faulted, offline or unknown (see [`UnitStatus`]).
    pub status: UnitStatus,
    /// The unit answers: its status is [`UnitStatus::Online`] or [`UnitStatus::Faulted`]
    /// (exceptions are answers). Report [`status`](Self::status): a faulted unit is "online"
    /// here but delivers no data.
    pub online: bool,
    /// Wall-clock time of the last successful read.
    pub last_success: Option<SystemTime>,
    /// Failed transactions in a row (timeouts, garbage, exceptions, port errors).
    pub consecutive_errors: u32,
    /// Timeouts in a row.
    pub consecutive_timeouts: u32,
    /// Transactions in a row without a valid answer (timeouts, corrupted answers, gateway
    /// exceptions 0A/0B); reaching the bus's `offline_after` marks the unit offline. Any
    /// valid answer, an exception other than 0A/0B included, resets it.
    pub consecutive_unanswered: u32,
    /// Transactions attempted.
    pub transactions: u64,
    /// Transactions answered with data.
    pub successes: u64,
    /// Transactions that got no answer in time.
    pub timeouts: u64,
    /// Corrupted answers: bad CRC, garbage, answers from the wrong unit or function.
    pub crc_errors: u64,
    /// Exception responses (the unit is alive but refused); 0A/0B are not counted here.
    pub exceptions: u64,
    /// Exceptions 0A (gateway path unavailable) and 0B (gateway target device failed to
    /// respond): a gateway answered for a device behind it that did not. Counted like
    /// timeouts towards `offline_after`.
    pub gateway_errors: u64,
    /// Complete poll cycles (every planned request attempted).
    pub poll_cycles: u64,
    /// The unit is backed off (offline or faulted); its next poll is this long after the
    /// moment it was backed off.
    pub backoff: Option<Duration>,
    /// The last error, human readable.
    pub last_error: Option<String>,
}

impl UnitHealth {
    /// A unit that has not been polled yet (reported offline until it answers).
    pub fn new(unit: u8) -> Self {
        Self {
            unit,
            status: UnitStatus::Unknown,
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
            gateway_errors: 0,
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

/// One unit's entry in a [`BusStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitStatusEntry {
    /// Modbus unit (slave) id.
    pub unit: u8,
    /// Its status.
    pub status: UnitStatus,
    /// Why it is not online (the unit's last error, or the port's), when the status changed;
    /// `None` while online or unknown.
    pub error: Option<String>,
}

/// The slowly changing part of a bus's health — what a device twin reports — published by
/// [`crate::bus::BusHandle::watch_status`]. Unlike [`BusHealth`], whose counters change on
/// every transaction, a new value is published only when the port goes down or comes back,
/// or a unit's [`UnitStatus`] changes; poll events are not needed to see either (a backed-off
/// unit or a closed port sends none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusStatus {
    /// Bus name.
    pub bus: String,
    /// Why the port or connection is down; `None` while it is open (or not tried yet).
    pub port_down: Option<String>,
    /// Units in configuration order.
    pub units: Vec<UnitStatusEntry>,
}

impl BusStatus {
    /// The status of `unit`, if it is on this bus.
    pub fn unit(&self, unit: u8) -> Option<&UnitStatusEntry> {
        self.units.iter().find(|u| u.unit == unit)
    }

    /// The status part of a health snapshot.
    pub fn of(health: &BusHealth) -> Self {
        let port_down = match &health.port {
            PortState::Down { error, .. } => Some(error.clone()),
            PortState::Stopped => Some("bus stopped".to_owned()),
            PortState::Starting | PortState::Open => None,
        };
        let units = health
            .units
            .iter()
            .map(|u| UnitStatusEntry {
                unit: u.unit,
                status: u.status,
                error: match u.status {
                    UnitStatus::Online | UnitStatus::Unknown => None,
                    UnitStatus::Faulted | UnitStatus::Offline => port_down
                        .clone()
                        .map(|e| format!("port: {e}"))
                        .or_else(|| u.last_error.clone()),
                },
            })
            .collect();
        Self {
            bus: health.bus.clone(),
            port_down,
            units,
        }
    }

    /// Whether `other` differs in what this status is about (port up/down and its error,
    /// unit statuses), ignoring error texts of units whose status did not change.
    fn same_states(&self, other: &Self) -> bool {
        self.port_down == other.port_down
            && self.units.len() == other.units.len()
            && self
                .units
                .iter()
                .zip(&other.units)
                .all(|(a, b)| a.unit == b.unit && a.status == b.status)
    }
}

/// The sending side of a bus's health: the full snapshot, and the status derived from it,
/// published only when it changes.
#[derive(Debug)]
pub(crate) struct HealthTx {
    health: tokio::sync::watch::Sender<BusHealth>,
    status: tokio::sync::watch::Sender<BusStatus>,
}

impl HealthTx {
    /// Channels for `initial`, and their receivers.
    pub(crate) fn new(
        initial: BusHealth,
    ) -> (
        Self,
        tokio::sync::watch::Receiver<BusHealth>,
        tokio::sync::watch::Receiver<BusStatus>,
    ) {
        let (status, status_rx) = tokio::sync::watch::channel(BusStatus::of(&initial));
        let (health, health_rx) = tokio::sync::watch::channel(initial);
        (Self { health, status }, health_rx, status_rx)
    }

    /// Changes the snapshot (watchers are notified) and republishes the status if it changed.
    pub(crate) fn modify(&self, f: impl FnOnce(&mut BusHealth)) {
        self.health.send_modify(f);
        let next = BusStatus::of(&self.health.borrow());
        self.status.send_if_modified(|s| {
            if s.same_states(&next) {
                false
            } else {
                *s = next;
                true
            }
        });
    }
}
