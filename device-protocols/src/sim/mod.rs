//! A Modbus slave simulator: several units on one RTU line (a pseudo-terminal) or behind one
//! Modbus TCP endpoint, built on tokio-modbus' server, with fault switches for tests.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use device_protocols::sim::{RtuSim, SimMap, UnitMap};
//! let dir = tempfile::tempdir()?;
//! let map = SimMap::new()
//!     .with_unit(1, UnitMap::new().with_holding(0, &[230, 50]))
//!     .with_unit(7, UnitMap::new().with_input(0, &[215]));
//! let sim = RtuSim::start(dir.path().join("ttyBUS"), map)?;
//! // the client opens sim.path() (a symlink to the pty slave) at any baud rate
//! sim.handle().set_silent(7, true);          // unit 7 stops answering
//! sim.unplug().await?;                       // the adapter vanishes …
//! sim.replug().await?;                       // … and comes back behind the same path
//! # Ok(()) }
//! ```
//!
//! # Fault switches ([`Faults`], per unit, changeable at run time through [`SimHandle`])
//!
//! | switch | the client sees |
//! | --- | --- |
//! | `silent` | no answer: a timeout (the request is still counted) |
//! | `exceptions` | exception response (e.g. 02, 04, 06) for requests touching chosen addresses |
//! | `delay` | the answer, late (the line is busy meanwhile, as with a slow device) |
//! | `garbage` | line noise instead of the answer: a decode error (RTU; on TCP: silent) |
//! | `bad_crc` | the answer with a corrupted CRC: usually a timeout, the frame is dropped (RTU) |
//!
//! Line-wide: [`RtuSim::inject_noise`] puts raw bytes on the line, [`RtuSim::unplug`] /
//! [`RtuSim::replug`] simulate a USB adapter vanishing and coming back.
//!
//! Unit id 0 (broadcast) writes go to every unit and are never answered. Requests for ids
//! without a unit are not answered (nobody is there), unless
//! [`SimHandle::set_absent_exception`] makes the simulator act as a Modbus TCP gateway that
//! answers for them with exception 0A (gateway path unavailable) or 0B (gateway target device
//! failed to respond). A present unit answering only exceptions: `ExceptionRule::always`.

pub mod cli;
mod map;
mod rtu;
mod tcp;

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::point::Table;

pub use map::{Generator, SimMap, SimMapError, UnitMap, handle_request, request_span};
pub use rtu::RtuSim;
pub use tcp::TcpSim;

/// Answers a unit gives instead of the normal one when a request touches chosen addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionRule {
    /// The table the rule applies to; `None` = every table.
    pub table: Option<Table>,
    /// Addresses; a request whose range overlaps them gets the exception.
    pub addresses: RangeInclusive<u16>,
    /// The exception to answer.
    pub code: ExceptionCode,
}

impl ExceptionRule {
    /// `code` for every request to the unit (e.g. 06 busy, 04 device failure).
    pub fn always(code: ExceptionCode) -> Self {
        Self {
            table: None,
            addresses: 0..=u16::MAX,
            code,
        }
    }

    /// `code` for requests touching `addresses` of `table`.
    pub fn at(table: Table, addresses: RangeInclusive<u16>, code: ExceptionCode) -> Self {
        Self {
            table: Some(table),
            addresses,
            code,
        }
    }

    fn matches(&self, req: &Request<'_>) -> bool {
        request_span(req).iter().any(|&(table, start, count)| {
            let end = u32::from(start) + u32::from(count.max(1)) - 1;
            self.table.is_none_or(|t| t == table)
                && u32::from(*self.addresses.start()) <= end
                && u32::from(start) <= u32::from(*self.addresses.end())
        })
    }
}

/// Fault switches of one unit. `Faults::default()` is a healthy unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Never answer.
    pub silent: bool,
    /// Answer this much later.
    pub delay: Option<Duration>,
    /// Put noise on the line instead of answering (RTU; TCP stays silent).
    pub garbage: bool,
    /// Answer with a corrupted CRC (RTU only).
    pub bad_crc: bool,
    /// Exception answers; the first matching rule wins.
    pub exceptions: Vec<ExceptionRule>,
}

/// Counters of one unit, for tests to observe the client's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitStats {
    /// Requests addressed to the unit (answered or not).
    pub requests: u64,
    /// Normal answers sent.
    pub answered: u64,
    /// Exception answers sent.
    pub exceptions: u64,
    /// Requests by function code (index = code, e.g. `by_function[6]` counts fc 6 writes;
    /// codes ≥ 32 are not counted here).
    pub by_function: [u64; 32],
}

#[derive(Debug)]
struct UnitState {
    map: UnitMap,
    faults: Faults,
    stats: UnitStats,
}

#[derive(Debug)]
struct State {
    started: Instant,
    units: BTreeMap<u8, UnitState>,
    /// What requests for ids without a unit get (`None`: no answer).
    absent: Option<ExceptionCode>,
}

/// The noise bytes a `garbage` unit sends instead of its answer: 64 × 0xFF. tokio-modbus'
/// RTU decoder cannot frame them (function code 0xFF, no valid CRC) and gives up with an
/// error after 20 attempts, so the client sees a decode error rather than a timeout.
pub const GARBAGE: [u8; 64] = [0xFF; 64];

/// Line side effects the service asks the RTU line for.
#[derive(Debug, Default)]
struct LineEffects {
    noise: Option<mpsc::UnboundedSender<Vec<u8>>>,
    corrupt_next: AtomicU32,
}

/// Run-time control of a running simulator: values, fault switches, counters.
/// Cheap to clone; all clones control the same simulator.
#[derive(Debug, Clone)]
pub struct SimHandle {
    state: Arc<Mutex<State>>,
}

impl SimHandle {
    fn new(map: SimMap) -> Self {
        let units = map
            .units
            .into_iter()
            .map(|(id, map)| {
                (
                    id,
                    UnitState {
                        map,
                        faults: Faults::default(),
                        stats: UnitStats::default(),
                    },
                )
            })
            .collect();
        Self {
            state: Arc::new(Mutex::new(State {
                started: Instant::now(),
                units,
                absent: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data in a consistent state.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The unit ids served.
    pub fn unit_ids(&self) -> Vec<u8> {
        self.lock().units.keys().copied().collect()
    }

    /// Adds or replaces a unit (healthy, zero counters).
    pub fn add_unit(&self, id: u8, map: UnitMap) {
        self.lock().units.insert(
            id,
            UnitState {
                map,
                faults: Faults::default(),
                stats: UnitStats::default(),
            },
        );
    }

    /// Answers requests for ids without a unit with `code` (`None`, the default: no answer),
    /// like a Modbus TCP gateway answering 0B (gateway target device failed to respond) or
    /// 0A (gateway path unavailable) for a device behind it that is absent.
    pub fn set_absent_exception(&self, code: Option<ExceptionCode>) {
        self.lock().absent = code;
    }

    /// Removes a unit: requests to it go unanswered.
    pub fn remove_unit(&self, id: u8) {
        self.lock().units.remove(&id);
    }

    /// Replaces the fault switches of `unit` (no-op for an unknown unit).
    pub fn set_faults(&self, unit: u8, faults: Faults) {
        if let Some(u) = self.lock().units.get_mut(&unit) {
            u.faults = faults;
        }
    }

    /// The fault switches of `unit`.
    pub fn faults(&self, unit: u8) -> Option<Faults> {
        self.lock().units.get(&unit).map(|u| u.faults.clone())
    }

    /// Changes some fault switches of `unit`.
    pub fn update_faults(&self, unit: u8, f: impl FnOnce(&mut Faults)) {
        if let Some(u) = self.lock().units.get_mut(&unit) {
            f(&mut u.faults);
        }
    }

    /// Makes `unit` silent (or answer again).
    pub fn set_silent(&self, unit: u8, silent: bool) {
        self.update_faults(unit, |f| f.silent = silent);
    }

    /// Delays every answer of `unit` (`None` = answer at once).
    pub fn set_delay(&self, unit: u8, delay: Option<Duration>) {
        self.update_faults(unit, |f| f.delay = delay);
    }

    /// Makes `unit` send line noise instead of answers.
    pub fn set_garbage(&self, unit: u8, garbage: bool) {
        self.update_faults(unit, |f| f.garbage = garbage);
    }

    /// Makes `unit` answer with a corrupted CRC.
    pub fn set_bad_crc(&self, unit: u8, bad_crc: bool) {
        self.update_faults(unit, |f| f.bad_crc = bad_crc);
    }

    /// Adds an exception rule to `unit`.
    pub fn add_exception(&self, unit: u8, rule: ExceptionRule) {
        self.update_faults(unit, |f| f.exceptions.push(rule));
    }

    /// Heals `unit`: all fault switches off.
    pub fn clear_faults(&self, unit: u8) {
        self.set_faults(unit, Faults::default());
    }

    /// Current values of `count` addresses of `table` from `start` (bits as 0/1); `None`
    /// for an unknown unit or any missing address.
    pub fn values(&self, unit: u8, table: Table, start: u16, count: u16) -> Option<Vec<u16>> {
        let st = self.lock();
        let elapsed = st.started.elapsed();
        let u = st.units.get(&unit)?;
        (0..count)
            .map(|i| {
                start
                    .checked_add(i)
                    .and_then(|a| u.map.value(table, a, elapsed))
            })
            .collect()
    }

    /// One holding register (a convenience for tests).
    pub fn holding(&self, unit: u8, addr: u16) -> Option<u16> {
        self.values(unit, Table::Holding, addr, 1).map(|v| v[0])
    }

    /// Sets values (creating the addresses); bits from non-zero. No-op for an unknown unit.
    pub fn set_values(&self, unit: u8, table: Table, start: u16, values: &[u16]) {
        if let Some(u) = self.lock().units.get_mut(&unit) {
            u.map.set(table, start, values);
        }
    }

    /// A copy of the unit's map (stored values; generators unevaluated).
    pub fn unit_map(&self, unit: u8) -> Option<UnitMap> {
        self.lock().units.get(&unit).map(|u| u.map.clone())
    }

    /// The unit's counters.
    pub fn stats(&self, unit: u8) -> Option<UnitStats> {
        self.lock().units.get(&unit).map(|u| u.stats)
    }

    /// Requests addressed to `unit` so far (0 for an unknown unit).
    pub fn requests(&self, unit: u8) -> u64 {
        self.stats(unit).map_or(0, |s| s.requests)
    }

    /// Resets the counters of every unit.
    pub fn reset_stats(&self) {
        for u in self.lock().units.values_mut() {
            u.stats = UnitStats::default();
        }
    }

    /// What to do with one request, decided under the lock.
    fn decide(&self, req: &SlaveRequest<'_>) -> Decision {
        let mut st = self.lock();
        let elapsed = st.started.elapsed();
        if req.slave == 0 {
            for u in st.units.values_mut() {
                u.stats.requests += 1;
                if !u.faults.silent {
                    // Broadcasts carry writes; their results are never answered.
                    let _ = handle_request(&mut u.map, &req.request, elapsed);
                }
            }
            return Decision::Ignore;
        }
        let absent = st.absent;
        let Some(u) = st.units.get_mut(&req.slave) else {
            return absent.map_or(Decision::Ignore, |code| {
                Decision::Answer(None, false, Err(code))
            });
        };
        u.stats.requests += 1;
        if let Some(n) = u
            .stats
            .by_function
            .get_mut(usize::from(req.request.function_code().value()))
        {
            *n += 1;
        }
        if u.faults.silent {
            return Decision::Ignore;
        }
        let delay = u.faults.delay;
        if u.faults.garbage {
            return Decision::Garbage(delay);
        }
        let bad_crc = u.faults.bad_crc;
        let result = match u.faults.exceptions.iter().find(|r| r.matches(&req.request)) {
            Some(rule) => Err(rule.code),
            None if delay.is_some() => {
                // Evaluated after the delay, so that a slow answer carries fresh values.
                return Decision::Later(delay.unwrap_or_default(), bad_crc);
            }
            None => handle_request(&mut u.map, &req.request, elapsed),
        };
        match &result {
            Ok(_) => u.stats.answered += 1,
            Err(_) => u.stats.exceptions += 1,
        }
        Decision::Answer(delay, bad_crc, result)
    }

    /// Serves a request after a delay (the unit may have changed meanwhile).
    fn answer_now(&self, req: &SlaveRequest<'_>) -> Option<Result<Response, ExceptionCode>> {
        let mut st = self.lock();
        let elapsed = st.started.elapsed();
        let u = st.units.get_mut(&req.slave)?;
        if u.faults.silent {
            return None;
        }
        let result = handle_request(&mut u.map, &req.request, elapsed);
        match &result {
            Ok(_) => u.stats.answered += 1,
            Err(_) => u.stats.exceptions += 1,
        }
        Some(result)
    }
}

enum Decision {
    Ignore,
    Garbage(Option<Duration>),
    Answer(Option<Duration>, bool, Result<Response, ExceptionCode>),
    Later(Duration, bool),
}

/// The tokio-modbus [`Service`](tokio_modbus::server::Service) behind both servers.
#[derive(Debug, Clone)]
struct SimService {
    handle: SimHandle,
    line: Arc<LineEffects>,
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send + 'static>>;

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = ServiceFuture;

    fn call(&self, req: Self::Request) -> Self::Future {
        let decision = self.handle.decide(&req);
        let handle = self.handle.clone();
        let line = Arc::clone(&self.line);
        Box::pin(async move {
            let corrupt = |bad_crc: bool| {
                if bad_crc {
                    line.corrupt_next.fetch_add(1, Ordering::SeqCst);
                }
            };
            match decision {
                Decision::Ignore => Ok(None),
                Decision::Garbage(delay) => {
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                    if let Some(noise) = &line.noise {
                        // The line task is gone only when the simulator stops.
                        let _ = noise.send(GARBAGE.to_vec());
                    }
                    Ok(None)
                }
                Decision::Answer(delay, bad_crc, result) => {
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                    corrupt(bad_crc);
                    result.map(Some)
                }
                Decision::Later(delay, bad_crc) => {
                    tokio::time::sleep(delay).await;
                    match handle.answer_now(&req) {
                        None => Ok(None),
                        Some(result) => {
                            corrupt(bad_crc);
                            result.map(Some)
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[test]
    fn exception_rules_match_overlapping_ranges_of_their_table() {
        let rule = ExceptionRule::at(Table::Holding, 10..=12, ExceptionCode::ServerDeviceFailure);
        assert!(rule.matches(&Request::ReadHoldingRegisters(8, 3)));
        assert!(rule.matches(&Request::ReadHoldingRegisters(12, 100)));
        assert!(!rule.matches(&Request::ReadHoldingRegisters(8, 2)));
        assert!(!rule.matches(&Request::ReadHoldingRegisters(13, 2)));
        assert!(!rule.matches(&Request::ReadInputRegisters(10, 1)));
        assert!(rule.matches(&Request::WriteSingleRegister(11, 0)));
        assert!(rule.matches(&Request::WriteMultipleRegisters(9, Cow::Owned(vec![0, 0]))));
        assert!(rule.matches(&Request::ReadWriteMultipleRegisters(
            0,
            1,
            12,
            Cow::Owned(vec![0])
        )));
        let always = ExceptionRule::always(ExceptionCode::ServerDeviceBusy);
        assert!(always.matches(&Request::ReadCoils(65_535, 1)));
        assert!(!always.matches(&Request::ReportServerId));
    }

    #[tokio::test]
    async fn decisions_follow_the_fault_switches() {
        let handle = SimHandle::new(
            SimMap::new()
                .with_unit(1, UnitMap::new().with_holding(0, &[5]))
                .with_unit(2, UnitMap::new().with_holding(0, &[6])),
        );
        let req = |slave| SlaveRequest {
            slave,
            request: Request::ReadHoldingRegisters(0, 1),
        };
        assert!(matches!(
            handle.decide(&req(1)),
            Decision::Answer(None, false, Ok(Response::ReadHoldingRegisters(_)))
        ));
        assert!(matches!(handle.decide(&req(3)), Decision::Ignore));
        handle.set_absent_exception(Some(ExceptionCode::GatewayTargetDevice));
        assert!(matches!(
            handle.decide(&req(3)),
            Decision::Answer(None, false, Err(ExceptionCode::GatewayTargetDevice))
        ));
        handle.set_absent_exception(None);
        handle.set_silent(1, true);
        assert!(matches!(handle.decide(&req(1)), Decision::Ignore));
        handle.set_faults(
            1,
            Faults {
                garbage: true,
                ..Faults::default()
            },
        );
        assert!(matches!(handle.decide(&req(1)), Decision::Garbage(None)));
        handle.clear_faults(1);
        handle.set_delay(1, Some(Duration::from_secs(1)));
        handle.set_bad_crc(1, true);
        assert!(matches!(
            handle.decide(&req(1)),
            Decision::Later(d, true) if d == Duration::from_secs(1)
        ));
        assert_eq!(handle.requests(1), 4);
        assert_eq!(handle.requests(2), 0);
        // Broadcast writes reach every unit and are counted for each.
        let write = SlaveRequest {
            slave: 0,
            request: Request::WriteSingleRegister(0, 9),
        };
        assert!(matches!(handle.decide(&write), Decision::Ignore));
        assert_eq!(handle.holding(2, 0), Some(9));
        assert_eq!(handle.requests(2), 1);
        handle.reset_stats();
        assert_eq!(handle.stats(1), Some(UnitStats::default()));
    }
}
