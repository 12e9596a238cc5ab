//! Register maps of simulated units, their TOML form, value generators, and the pure
//! request handler (`Request` → `Response` or exception).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tokio_modbus::{ExceptionCode, Request, Response};

use crate::point::Table;

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

fn one() -> i32 {
    1
}

/// A value that changes with time since the simulator started. Registers get the value as
/// `u16` (negative values in two's complement, i.e. as an `i16` would be encoded); bits are
/// `true` when the value is not 0.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Generator {
    /// `start + step × ⌊t / every⌋`, wrapping at 16 bits.
    Counter {
        /// Value at t = 0.
        #[serde(default)]
        start: u16,
        /// Increment per tick.
        #[serde(default = "one")]
        step: i32,
        /// Tick period (e.g. `"1s"`).
        #[serde(deserialize_with = "de_duration")]
        every: Duration,
    },
    /// A sawtooth: from `from` to `to` (inclusive) by `step` per `every`, then back to `from`.
    Ramp {
        /// First value.
        from: i32,
        /// Last value.
        to: i32,
        /// Increment per tick (> 0).
        #[serde(default = "one")]
        step: i32,
        /// Tick period.
        #[serde(deserialize_with = "de_duration")]
        every: Duration,
    },
    /// `round(center + amplitude × sin(2π t / period))`, clamped to `i16`.
    Sine {
        /// Mid value.
        center: f64,
        /// Peak deviation.
        amplitude: f64,
        /// Full period.
        #[serde(deserialize_with = "de_duration")]
        period: Duration,
    },
    /// Alternates 0 and 1 every `every` (for bits).
    Toggle {
        /// Half period.
        #[serde(deserialize_with = "de_duration")]
        every: Duration,
    },
}

fn ticks(elapsed: Duration, every: Duration) -> u128 {
    if every.is_zero() {
        0
    } else {
        elapsed.as_nanos() / every.as_nanos()
    }
}

impl Generator {
    /// The register value `elapsed` after start.
    pub fn value_at(&self, elapsed: Duration) -> u16 {
        match *self {
            Generator::Counter { start, step, every } => {
                let t = (ticks(elapsed, every) % 65_536) as i64;
                (i64::from(start) + i64::from(step) * t).rem_euclid(65_536) as u16
            }
            Generator::Ramp {
                from,
                to,
                step,
                every,
            } => {
                let step = i64::from(step.max(1));
                let span = (i64::from(to) - i64::from(from)).max(0) / step + 1;
                let t = (ticks(elapsed, every) % span as u128) as i64;
                (i64::from(from) + step * t) as u16
            }
            Generator::Sine {
                center,
                amplitude,
                period,
            } => {
                let phase = if period.is_zero() {
                    0.0
                } else {
                    elapsed.as_secs_f64() / period.as_secs_f64()
                };
                let v = center + amplitude * (std::f64::consts::TAU * phase).sin();
                v.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16 as u16
            }
            Generator::Toggle { every } => (ticks(elapsed, every) % 2) as u16,
        }
    }
}

/// The data of one simulated unit (slave). Only addresses present here exist: reading or
/// writing any other address answers exception 02 (illegal data address), as real devices do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnitMap {
    /// Coils by address.
    pub coils: BTreeMap<u16, bool>,
    /// Discrete inputs by address.
    pub discrete_inputs: BTreeMap<u16, bool>,
    /// Holding registers by address.
    pub holding: BTreeMap<u16, u16>,
    /// Input registers by address.
    pub input: BTreeMap<u16, u16>,
    /// Time-varying addresses (they exist even without a stored value). A write to a
    /// generated coil or holding register stops its generator: the written value stays.
    pub generators: BTreeMap<(Table, u16), Generator>,
}

impl UnitMap {
    /// An empty unit (every read answers exception 02).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds consecutive registers to `table` (holding or input) from `start`.
    ///
    /// # Panics
    /// If `table` is a bit table or the range runs past address 65535.
    #[must_use]
    pub fn with_registers(mut self, table: Table, start: u16, values: &[u16]) -> Self {
        let map = self
            .registers_mut(table)
            .expect("with_registers needs a register table");
        for (i, v) in values.iter().enumerate() {
            let addr = u16::try_from(usize::from(start) + i).expect("address within 0..=65535");
            map.insert(addr, *v);
        }
        self
    }

    /// Adds consecutive holding registers from `start`.
    #[must_use]
    pub fn with_holding(self, start: u16, values: &[u16]) -> Self {
        self.with_registers(Table::Holding, start, values)
    }

    /// Adds consecutive input registers from `start`.
    #[must_use]
    pub fn with_input(self, start: u16, values: &[u16]) -> Self {
        self.with_registers(Table::Input, start, values)
    }

    /// Adds consecutive bits to `table` (coil or discrete input) from `start`.
    ///
    /// # Panics
    /// If `table` is a register table or the range runs past address 65535.
    #[must_use]
    pub fn with_bits(mut self, table: Table, start: u16, values: &[bool]) -> Self {
        let map = self.bits_mut(table).expect("with_bits needs a bit table");
        for (i, v) in values.iter().enumerate() {
            let addr = u16::try_from(usize::from(start) + i).expect("address within 0..=65535");
            map.insert(addr, *v);
        }
        self
    }

    /// Adds consecutive coils from `start`.
    #[must_use]
    pub fn with_coils(self, start: u16, values: &[bool]) -> Self {
        self.with_bits(Table::Coil, start, values)
    }

    /// Adds consecutive discrete inputs from `start`.
    #[must_use]
    pub fn with_discrete_inputs(self, start: u16, values: &[bool]) -> Self {
        self.with_bits(Table::DiscreteInput, start, values)
    }

    /// Makes `address` of `table` time-varying.
    #[must_use]
    pub fn with_generator(mut self, table: Table, address: u16, generator: Generator) -> Self {
        self.generators.insert((table, address), generator);
        self
    }

    /// The register map of `table`, `None` for bit tables.
    pub fn registers_mut(&mut self, table: Table) -> Option<&mut BTreeMap<u16, u16>> {
        match table {
            Table::Holding => Some(&mut self.holding),
            Table::Input => Some(&mut self.input),
            Table::Coil | Table::DiscreteInput => None,
        }
    }

    /// The bit map of `table`, `None` for register tables.
    pub fn bits_mut(&mut self, table: Table) -> Option<&mut BTreeMap<u16, bool>> {
        match table {
            Table::Coil => Some(&mut self.coils),
            Table::DiscreteInput => Some(&mut self.discrete_inputs),
            Table::Holding | Table::Input => None,
        }
    }

    fn exists(&self, table: Table, addr: u16) -> bool {
        self.generators.contains_key(&(table, addr))
            || match table {
                Table::Coil => self.coils.contains_key(&addr),
                Table::DiscreteInput => self.discrete_inputs.contains_key(&addr),
                Table::Holding => self.holding.contains_key(&addr),
                Table::Input => self.input.contains_key(&addr),
            }
    }

    /// Current value of one register or bit (bits as 0/1), `None` if the address does not
    /// exist. `elapsed` is the time since the simulator started (for generators).
    pub fn value(&self, table: Table, addr: u16, elapsed: Duration) -> Option<u16> {
        if let Some(g) = self.generators.get(&(table, addr)) {
            let v = g.value_at(elapsed);
            return Some(if table.is_bits() {
                u16::from(v != 0)
            } else {
                v
            });
        }
        match table {
            Table::Coil => self.coils.get(&addr).map(|b| u16::from(*b)),
            Table::DiscreteInput => self.discrete_inputs.get(&addr).map(|b| u16::from(*b)),
            Table::Holding => self.holding.get(&addr).copied(),
            Table::Input => self.input.get(&addr).copied(),
        }
    }

    /// Reads `count` values from `start`; exception 02 if any address is missing.
    fn read(
        &self,
        table: Table,
        start: u16,
        count: u16,
        elapsed: Duration,
    ) -> Result<Vec<u16>, ExceptionCode> {
        (0..count)
            .map(|i| {
                start
                    .checked_add(i)
                    .and_then(|a| self.value(table, a, elapsed))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            })
            .collect()
    }

    /// Writes values from `start`; all-or-nothing, exception 02 if any address is missing.
    fn write(&mut self, table: Table, start: u16, values: &[u16]) -> Result<(), ExceptionCode> {
        let addrs: Vec<u16> = (0..values.len())
            .map(|i| {
                u16::try_from(usize::from(start) + i)
                    .ok()
                    .filter(|a| self.exists(table, *a))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            })
            .collect::<Result<_, _>>()?;
        for (addr, v) in addrs.into_iter().zip(values) {
            self.store(table, addr, *v);
        }
        Ok(())
    }

    /// Stores one value (bits from non-zero); a stored value replaces the generator.
    fn store(&mut self, table: Table, addr: u16, v: u16) {
        self.generators.remove(&(table, addr));
        match table {
            Table::Coil => {
                self.coils.insert(addr, v != 0);
            }
            Table::DiscreteInput => {
                self.discrete_inputs.insert(addr, v != 0);
            }
            Table::Holding => {
                self.holding.insert(addr, v);
            }
            Table::Input => {
                self.input.insert(addr, v);
            }
        }
    }

    /// Sets values regardless of whether the addresses exist (they are created). For tests
    /// and the simulator's control side, not reachable from the bus for read-only tables.
    pub fn set(&mut self, table: Table, start: u16, values: &[u16]) {
        for (i, v) in values.iter().enumerate() {
            let Ok(addr) = u16::try_from(usize::from(start) + i) else {
                break;
            };
            self.store(table, addr, *v);
        }
    }
}

/// The table and address range a request touches (`None` for requests without one).
pub fn request_span(req: &Request<'_>) -> Vec<(Table, u16, u16)> {
    fn len(n: usize) -> u16 {
        u16::try_from(n).unwrap_or(u16::MAX)
    }
    match req {
        Request::ReadCoils(a, n) => vec![(Table::Coil, *a, *n)],
        Request::ReadDiscreteInputs(a, n) => vec![(Table::DiscreteInput, *a, *n)],
        Request::WriteSingleCoil(a, _) => vec![(Table::Coil, *a, 1)],
        Request::WriteMultipleCoils(a, v) => vec![(Table::Coil, *a, len(v.len()))],
        Request::ReadInputRegisters(a, n) => vec![(Table::Input, *a, *n)],
        Request::ReadHoldingRegisters(a, n) => vec![(Table::Holding, *a, *n)],
        Request::WriteSingleRegister(a, _) | Request::MaskWriteRegister(a, _, _) => {
            vec![(Table::Holding, *a, 1)]
        }
        Request::WriteMultipleRegisters(a, v) => vec![(Table::Holding, *a, len(v.len()))],
        Request::ReadWriteMultipleRegisters(ra, rn, wa, v) => vec![
            (Table::Holding, *ra, *rn),
            (Table::Holding, *wa, len(v.len())),
        ],
        _ => Vec::new(),
    }
}

fn check_quantity(n: usize, max: usize) -> Result<(), ExceptionCode> {
    if (1..=max).contains(&n) {
        Ok(())
    } else {
        Err(ExceptionCode::IllegalDataValue)
    }
}

fn bits(values: Vec<u16>) -> Vec<bool> {
    values.into_iter().map(|v| v != 0).collect()
}

/// Serves one request against `unit` like a conforming slave: quantity limits (125/2000 read,
/// 123/1968 write) → exception 03, unknown addresses → 02, unsupported functions → 01.
pub fn handle_request(
    unit: &mut UnitMap,
    req: &Request<'_>,
    elapsed: Duration,
) -> Result<Response, ExceptionCode> {
    match req {
        Request::ReadCoils(a, n) => {
            check_quantity(usize::from(*n), 2000)?;
            Ok(Response::ReadCoils(bits(unit.read(
                Table::Coil,
                *a,
                *n,
                elapsed,
            )?)))
        }
        Request::ReadDiscreteInputs(a, n) => {
            check_quantity(usize::from(*n), 2000)?;
            Ok(Response::ReadDiscreteInputs(bits(unit.read(
                Table::DiscreteInput,
                *a,
                *n,
                elapsed,
            )?)))
        }
        Request::ReadHoldingRegisters(a, n) => {
            check_quantity(usize::from(*n), 125)?;
            Ok(Response::ReadHoldingRegisters(unit.read(
                Table::Holding,
                *a,
                *n,
                elapsed,
            )?))
        }
        Request::ReadInputRegisters(a, n) => {
            check_quantity(usize::from(*n), 125)?;
            Ok(Response::ReadInputRegisters(unit.read(
                Table::Input,
                *a,
                *n,
                elapsed,
            )?))
        }
        Request::WriteSingleCoil(a, v) => {
            unit.write(Table::Coil, *a, &[u16::from(*v)])?;
            Ok(Response::WriteSingleCoil(*a, *v))
        }
        Request::WriteMultipleCoils(a, v) => {
            check_quantity(v.len(), 1968)?;
            let words: Vec<u16> = v.iter().map(|b| u16::from(*b)).collect();
            unit.write(Table::Coil, *a, &words)?;
            Ok(Response::WriteMultipleCoils(*a, len_u16(v.len())))
        }
        Request::WriteSingleRegister(a, v) => {
            unit.write(Table::Holding, *a, &[*v])?;
            Ok(Response::WriteSingleRegister(*a, *v))
        }
        Request::WriteMultipleRegisters(a, v) => {
            check_quantity(v.len(), 123)?;
            unit.write(Table::Holding, *a, v)?;
            Ok(Response::WriteMultipleRegisters(*a, len_u16(v.len())))
        }
        Request::MaskWriteRegister(a, and, or) => {
            let cur = unit.read(Table::Holding, *a, 1, elapsed)?[0];
            unit.write(Table::Holding, *a, &[(cur & and) | (or & !and)])?;
            Ok(Response::MaskWriteRegister(*a, *and, *or))
        }
        Request::ReadWriteMultipleRegisters(ra, rn, wa, v) => {
            check_quantity(usize::from(*rn), 125)?;
            check_quantity(v.len(), 121)?;
            // Validate the read range before writing, so a failing request changes nothing.
            unit.read(Table::Holding, *ra, *rn, elapsed)?;
            unit.write(Table::Holding, *wa, v)?;
            Ok(Response::ReadWriteMultipleRegisters(unit.read(
                Table::Holding,
                *ra,
                *rn,
                elapsed,
            )?))
        }
        _ => Err(ExceptionCode::IllegalFunction),
    }
}

fn len_u16(n: usize) -> u16 {
    u16::try_from(n).expect("quantity checked against the protocol limit")
}

/// Errors loading a simulator map.
#[derive(Debug, thiserror::Error)]
pub enum SimMapError {
    /// The file could not be read.
    #[error("reading simulator map {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or does not describe a map (the message carries line/column).
    #[error("simulator map {origin}: {message}")]
    Parse {
        /// File name or `<string>`.
        origin: String,
        /// What is wrong, where.
        message: String,
    },
}

/// One unit value in the TOML form: a single value or consecutive values.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMap {
    #[serde(default)]
    unit: Vec<FileUnit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUnit {
    id: u8,
    #[serde(default)]
    coils: BTreeMap<String, OneOrMany<bool>>,
    #[serde(default)]
    discrete_inputs: BTreeMap<String, OneOrMany<bool>>,
    #[serde(default)]
    holding: BTreeMap<String, OneOrMany<u16>>,
    #[serde(default)]
    input: BTreeMap<String, OneOrMany<u16>>,
    #[serde(default)]
    fill: Vec<FileFill>,
    #[serde(default)]
    generator: Vec<FileGenerator>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFill {
    table: Table,
    start: u16,
    count: u16,
    #[serde(default)]
    value: u16,
}

#[derive(Debug, Deserialize)]
struct FileGenerator {
    table: Table,
    address: u16,
    #[serde(flatten)]
    generator: Generator,
}

fn parse_address(key: &str) -> Result<u16, String> {
    let parsed = match key.strip_prefix("0x").or_else(|| key.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => key.parse(),
    };
    parsed.map_err(|_| format!("`{key}` is not an address 0..=65535 (decimal or 0x hex)"))
}

/// Several units on one line (or behind one TCP endpoint), by unit id.
///
/// # TOML form
///
/// ```toml
/// [[unit]]
/// id = 1
/// holding = { 0 = [2305, 0, 17], 100 = 215 }   # address = value or consecutive values
/// input = { "0x10" = 42 }                      # hex addresses in quotes
/// coils = { 0 = [true, false, true] }
/// discrete_inputs = { 3 = true }
/// fill = [{ table = "holding", start = 1000, count = 125, value = 0 }]
///
/// [[unit.generator]]                           # time-varying values
/// table = "input"
/// address = 5
/// kind = "sine"                                # counter | ramp | sine | toggle
/// center = 200
/// amplitude = 50
/// period = "60s"
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimMap {
    /// Units by id (1..=247).
    pub units: BTreeMap<u8, UnitMap>,
}

impl SimMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) unit `id`.
    #[must_use]
    pub fn with_unit(mut self, id: u8, unit: UnitMap) -> Self {
        self.units.insert(id, unit);
        self
    }

    /// Parses the TOML form; `origin` names the source in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, SimMapError> {
        let perr = |message: String| SimMapError::Parse {
            origin: origin.to_owned(),
            message,
        };
        let file: FileMap = toml::from_str(text).map_err(|e| perr(e.to_string()))?;
        let mut map = SimMap::new();
        for u in file.unit {
            if !(1..=247).contains(&u.id) {
                return Err(perr(format!("unit id {} is not in 1..=247", u.id)));
            }
            if map.units.contains_key(&u.id) {
                return Err(perr(format!("unit id {} appears twice", u.id)));
            }
            let ctx = |e: String| perr(format!("unit {}: {e}", u.id));
            let mut unit = UnitMap::new();
            for f in u.fill {
                let values = vec![f.value; usize::from(f.count)];
                check_span(f.start, values.len()).map_err(ctx)?;
                unit.set(f.table, f.start, &values);
            }
            for (table, entries) in [(Table::Holding, u.holding), (Table::Input, u.input)] {
                for (key, values) in entries {
                    let start = parse_address(&key).map_err(ctx)?;
                    let values = values.into_vec();
                    check_span(start, values.len()).map_err(ctx)?;
                    unit.set(table, start, &values);
                }
            }
            for (table, entries) in [
                (Table::Coil, u.coils),
                (Table::DiscreteInput, u.discrete_inputs),
            ] {
                for (key, values) in entries {
                    let start = parse_address(&key).map_err(ctx)?;
                    let values: Vec<u16> = values.into_vec().into_iter().map(u16::from).collect();
                    check_span(start, values.len()).map_err(ctx)?;
                    unit.set(table, start, &values);
                }
            }
            for g in u.generator {
                unit.generators.insert((g.table, g.address), g.generator);
            }
            map.units.insert(u.id, unit);
        }
        Ok(map)
    }

    /// Reads and parses a TOML map file.
    pub fn load(path: &Path) -> Result<Self, SimMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimMapError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }
}

fn check_span(start: u16, len: usize) -> Result<(), String> {
    if usize::from(start) + len > 65_536 {
        Err(format!(
            "{len} values from address {start} run past address 65535"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    const T0: Duration = Duration::ZERO;

    #[test]
    fn reads_existing_addresses_and_rejects_gaps() {
        let mut u = UnitMap::new()
            .with_holding(10, &[1, 2, 3])
            .with_holding(14, &[5]);
        assert_eq!(
            handle_request(&mut u, &Request::ReadHoldingRegisters(10, 3), T0),
            Ok(Response::ReadHoldingRegisters(vec![1, 2, 3]))
        );
        // 13 is a hole: a merged read across it fails as a whole, like on real devices.
        assert_eq!(
            handle_request(&mut u, &Request::ReadHoldingRegisters(10, 5), T0),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            handle_request(&mut u, &Request::ReadInputRegisters(10, 1), T0),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }

    #[test]
    fn quantity_limits_answer_illegal_value() {
        let mut u = UnitMap::new()
            .with_holding(0, &[0; 200])
            .with_coils(0, &[false; 2100]);
        assert!(handle_request(&mut u, &Request::ReadHoldingRegisters(0, 125), T0).is_ok());
        assert_eq!(
            handle_request(&mut u, &Request::ReadHoldingRegisters(0, 126), T0),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            handle_request(&mut u, &Request::ReadHoldingRegisters(0, 0), T0),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert!(handle_request(&mut u, &Request::ReadCoils(0, 2000), T0).is_ok());
        assert_eq!(
            handle_request(&mut u, &Request::ReadCoils(0, 2001), T0),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            handle_request(
                &mut u,
                &Request::WriteMultipleRegisters(0, Cow::Owned(vec![0; 124])),
                T0
            ),
            Err(ExceptionCode::IllegalDataValue)
        );
    }

    #[test]
    fn writes_are_stored_and_all_or_nothing() {
        let mut u = UnitMap::new()
            .with_holding(0, &[0, 0])
            .with_coils(0, &[false]);
        assert_eq!(
            handle_request(&mut u, &Request::WriteSingleRegister(1, 77), T0),
            Ok(Response::WriteSingleRegister(1, 77))
        );
        assert_eq!(u.holding[&1], 77);
        // Address 2 does not exist: nothing is written.
        assert_eq!(
            handle_request(
                &mut u,
                &Request::WriteMultipleRegisters(0, Cow::Owned(vec![9, 9, 9])),
                T0
            ),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(u.holding[&0], 0);
        handle_request(&mut u, &Request::WriteSingleCoil(0, true), T0).unwrap();
        assert!(u.coils[&0]);
        handle_request(&mut u, &Request::MaskWriteRegister(1, 0x00F0, 0x0005), T0).unwrap();
        // (77 & 0xF0) | (5 & !0xF0) = 64 | 5
        assert_eq!(u.holding[&1], 69);
        assert_eq!(
            handle_request(&mut u, &Request::ReportServerId, T0),
            Err(ExceptionCode::IllegalFunction)
        );
    }

    #[test]
    fn generators_vary_with_time_and_stop_on_write() {
        let mut u = UnitMap::new()
            .with_generator(
                Table::Holding,
                0,
                Generator::Counter {
                    start: 10,
                    step: 2,
                    every: Duration::from_secs(1),
                },
            )
            .with_generator(
                Table::Coil,
                0,
                Generator::Toggle {
                    every: Duration::from_secs(1),
                },
            );
        let at = |u: &mut UnitMap, s| {
            handle_request(
                u,
                &Request::ReadHoldingRegisters(0, 1),
                Duration::from_secs(s),
            )
        };
        assert_eq!(at(&mut u, 0), Ok(Response::ReadHoldingRegisters(vec![10])));
        assert_eq!(at(&mut u, 3), Ok(Response::ReadHoldingRegisters(vec![16])));
        assert_eq!(u.value(Table::Coil, 0, Duration::from_secs(1)), Some(1));
        assert_eq!(u.value(Table::Coil, 0, Duration::from_secs(2)), Some(0));
        handle_request(&mut u, &Request::WriteSingleRegister(0, 5), T0).unwrap();
        assert_eq!(at(&mut u, 9), Ok(Response::ReadHoldingRegisters(vec![5])));
    }

    #[test]
    fn ramp_and_sine_values() {
        let ramp = Generator::Ramp {
            from: -2,
            to: 2,
            step: 2,
            every: Duration::from_secs(1),
        };
        let seq: Vec<i16> = (0..4)
            .map(|s| ramp.value_at(Duration::from_secs(s)) as i16)
            .collect();
        assert_eq!(seq, [-2, 0, 2, -2]);
        let sine = Generator::Sine {
            center: 100.0,
            amplitude: 50.0,
            period: Duration::from_secs(4),
        };
        assert_eq!(sine.value_at(Duration::ZERO), 100);
        assert_eq!(sine.value_at(Duration::from_secs(1)), 150);
        assert_eq!(sine.value_at(Duration::from_secs(3)), 50);
    }

    #[test]
    fn toml_map_parses_every_form() {
        let map = SimMap::from_toml_str(
            r#"
            [[unit]]
            id = 1
            holding = { 0 = [1, 2, 3], 100 = 215 }
            input = { "0x10" = 42 }
            coils = { 0 = [true, false] }
            discrete_inputs = { 3 = true }
            fill = [{ table = "holding", start = 1000, count = 3, value = 7 }]

            [[unit.generator]]
            table = "input"
            address = 5
            kind = "counter"
            every = "1s"

            [[unit]]
            id = 247
            "#,
            "test.toml",
        )
        .unwrap();
        let u = &map.units[&1];
        assert_eq!(u.holding.get(&2), Some(&3));
        assert_eq!(u.holding.get(&100), Some(&215));
        assert_eq!(u.holding.get(&1002), Some(&7));
        assert_eq!(u.input.get(&16), Some(&42));
        assert_eq!(u.coils.get(&1), Some(&false));
        assert_eq!(u.discrete_inputs.get(&3), Some(&true));
        assert_eq!(u.value(Table::Input, 5, Duration::from_secs(4)), Some(4));
        assert!(map.units[&247].holding.is_empty());
    }

    #[test]
    fn toml_tables_accept_point_and_legacy_spellings() {
        // Map files name tables like the agent's points do (`holding`), and the plural /
        // `*_register` spellings older map files used still parse.
        let map = SimMap::from_toml_str(
            r#"
            [[unit]]
            id = 1
            fill = [
                { table = "coil", start = 0, count = 1, value = 1 },
                { table = "coils", start = 1, count = 1, value = 1 },
                { table = "discrete_input", start = 0, count = 1, value = 1 },
                { table = "discrete_inputs", start = 1, count = 1, value = 1 },
                { table = "holding", start = 0, count = 1, value = 10 },
                { table = "holding_registers", start = 1, count = 1, value = 11 },
                { table = "input", start = 0, count = 1, value = 20 },
                { table = "input_register", start = 1, count = 1, value = 21 },
            ]

            [[unit.generator]]
            table = "holding_register"
            address = 2
            kind = "toggle"
            every = "1s"
            "#,
            "spellings.toml",
        )
        .unwrap();
        let u = &map.units[&1];
        let at = |table, addr| u.value(table, addr, Duration::from_secs(1));
        assert_eq!((at(Table::Coil, 0), at(Table::Coil, 1)), (Some(1), Some(1)));
        assert_eq!(
            (at(Table::DiscreteInput, 0), at(Table::DiscreteInput, 1)),
            (Some(1), Some(1))
        );
        assert_eq!(
            (
                at(Table::Holding, 0),
                at(Table::Holding, 1),
                at(Table::Holding, 2)
            ),
            (Some(10), Some(11), Some(1))
        );
        assert_eq!(
            (at(Table::Input, 0), at(Table::Input, 1)),
            (Some(20), Some(21))
        );
        let e = SimMap::from_toml_str(
            "[[unit]]\nid = 1\nfill = [{ table = \"registers\", start = 0, count = 1 }]",
            "m",
        )
        .unwrap_err();
        assert!(e.to_string().contains("registers"), "{e}");
    }

    #[test]
    fn toml_errors_name_origin_and_problem() {
        let e = SimMap::from_toml_str("[[unit]]\nid = 0", "m.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "simulator map m.toml: unit id 0 is not in 1..=247"
        );
        let e =
            SimMap::from_toml_str("[[unit]]\nid = 1\nholding = { x = 1 }", "m.toml").unwrap_err();
        assert!(e.to_string().contains("`x` is not an address"), "{e}");
        let e = SimMap::from_toml_str("[[unit]]\nid = 1\nholding = { 65535 = [1, 2] }", "m")
            .unwrap_err();
        assert!(e.to_string().contains("run past address 65535"), "{e}");
        let e = SimMap::from_toml_str("[[unit]]\nid = 1\ncolour = 1", "m").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = SimMap::from_toml_str("[[unit]]\nid = 1\n[[unit]]\nid = 1", "m").unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }

    #[test]
    fn read_write_multiple_writes_then_reads() {
        let mut u = UnitMap::new().with_holding(0, &[1, 2, 3, 4]);
        assert_eq!(
            handle_request(
                &mut u,
                &Request::ReadWriteMultipleRegisters(0, 4, 1, Cow::Owned(vec![20, 30])),
                T0
            ),
            Ok(Response::ReadWriteMultipleRegisters(vec![1, 20, 30, 4]))
        );
        // A bad read range fails before anything is written.
        assert_eq!(
            handle_request(
                &mut u,
                &Request::ReadWriteMultipleRegisters(3, 2, 0, Cow::Owned(vec![9])),
                T0
            ),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(u.holding[&0], 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        WriteOne(u16, u16),
        WriteMany(u16, Vec<u16>),
        Read(u16, u16),
        WriteCoils(u16, Vec<bool>),
        ReadCoils(u16, u16),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u16..60, any::<u16>()).prop_map(|(a, v)| Op::WriteOne(a, v)),
            (0u16..60, proptest::collection::vec(any::<u16>(), 1..20))
                .prop_map(|(a, v)| Op::WriteMany(a, v)),
            (0u16..60, 1u16..20).prop_map(|(a, n)| Op::Read(a, n)),
            (0u16..60, proptest::collection::vec(any::<bool>(), 1..20))
                .prop_map(|(a, v)| Op::WriteCoils(a, v)),
            (0u16..60, 1u16..20).prop_map(|(a, n)| Op::ReadCoils(a, n)),
        ]
    }

    proptest::proptest! {
        /// The unit behaves like an array of 50 registers and 50 coils: in-range requests act
        /// on it, requests touching any address >= 50 answer 02 and change nothing.
        #[test]
        fn unit_matches_an_array_model(ops in proptest::collection::vec(op(), 1..40)) {
            let mut regs = vec![0u16; 50];
            let mut coils = vec![false; 50];
            let mut u = UnitMap::new().with_holding(0, &regs).with_coils(0, &coils);
            for op in ops {
                let fits = |a: u16, n: usize| usize::from(a) + n <= 50;
                let (req, expect) = match op {
                    Op::WriteOne(a, v) => {
                        let ok = fits(a, 1);
                        if ok { regs[usize::from(a)] = v; }
                        (Request::WriteSingleRegister(a, v), ok.then_some(Response::WriteSingleRegister(a, v)))
                    }
                    Op::WriteMany(a, v) => {
                        let ok = fits(a, v.len());
                        if ok { regs[usize::from(a)..usize::from(a) + v.len()].copy_from_slice(&v); }
                        let n = v.len() as u16;
                        (Request::WriteMultipleRegisters(a, Cow::Owned(v)), ok.then_some(Response::WriteMultipleRegisters(a, n)))
                    }
                    Op::Read(a, n) => {
                        let ok = fits(a, usize::from(n));
                        let r = ok.then(|| Response::ReadHoldingRegisters(regs[usize::from(a)..usize::from(a + n)].to_vec()));
                        (Request::ReadHoldingRegisters(a, n), r)
                    }
                    Op::WriteCoils(a, v) => {
                        let ok = fits(a, v.len());
                        if ok { coils[usize::from(a)..usize::from(a) + v.len()].copy_from_slice(&v); }
                        let n = v.len() as u16;
                        (Request::WriteMultipleCoils(a, Cow::Owned(v)), ok.then_some(Response::WriteMultipleCoils(a, n)))
                    }
                    Op::ReadCoils(a, n) => {
                        let ok = fits(a, usize::from(n));
                        let r = ok.then(|| Response::ReadCoils(coils[usize::from(a)..usize::from(a + n)].to_vec()));
                        (Request::ReadCoils(a, n), r)
                    }
                };
                let got = handle_request(&mut u, &req, T0);
                proptest::prop_assert_eq!(got, expect.ok_or(ExceptionCode::IllegalDataAddress));
            }
            let stored: Vec<u16> = u.holding.values().copied().collect();
            proptest::prop_assert_eq!(stored, regs);
            let stored: Vec<bool> = u.coils.values().copied().collect();
            proptest::prop_assert_eq!(stored, coils);
        }

        #[test]
        fn counter_wraps_and_is_total(start: u16, step in -1000i32..1000, secs in 0u64..10_000_000) {
            let g = Generator::Counter { start, step, every: Duration::from_secs(1) };
            let v = g.value_at(Duration::from_secs(secs));
            let expect = (i64::from(start) + i64::from(step) * (secs as i64 % 65_536)).rem_euclid(65_536);
            proptest::prop_assert_eq!(i64::from(v), expect);
        }

        #[test]
        fn ramp_stays_within_bounds(from in -1000i32..1000, span in 0i32..1000, step in 1i32..50, secs in 0u64..100_000) {
            let g = Generator::Ramp { from, to: from + span, step, every: Duration::from_secs(1) };
            let v = i32::from(g.value_at(Duration::from_secs(secs)) as i16);
            proptest::prop_assert!(v >= from && v <= from + span);
        }
    }
}
