//! Typed Modbus points: where a value lives (table, address), how its registers are laid out
//! (data type, byte and word order) and how the raw number maps to engineering units
//! (`value = raw * scale + offset`).
//!
//! A point deserialises from the agent's TOML, e.g.
//! `{ name = "setpoint", table = "holding", address = 100, type = "u16", scale = 0.1, writable = true }`.
//! Invalid combinations (a `f32` in a coil, `bit = 16`, a zero scale, …) are rejected while
//! deserialising, so the TOML parser reports them with file position.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Highest number of registers a single point may span (one fc 3/4 request).
pub const MAX_POINT_REGISTERS: u16 = 125;

/// The four Modbus data tables, shared by the bus side (points, planner) and the simulator.
///
/// Serialised as `coil`, `discrete_input`, `holding`, `input` (the [`Display`](fmt::Display)
/// names); the aliases keep the plural and `*_register` spellings of older point and
/// simulator map files working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Read/write single bits (fc 1 read, fc 5/15 write).
    #[serde(alias = "coils")]
    Coil,
    /// Read-only single bits (fc 2).
    #[serde(alias = "discrete", alias = "discrete_inputs")]
    DiscreteInput,
    /// Read/write 16-bit registers (fc 3 read, fc 6/16/22/23 write).
    #[serde(alias = "holding_register", alias = "holding_registers")]
    Holding,
    /// Read-only 16-bit registers (fc 4).
    #[serde(alias = "input_register", alias = "input_registers")]
    Input,
}

impl Table {
    /// True for the bit tables (coils, discrete inputs).
    pub fn is_bits(self) -> bool {
        matches!(self, Self::Coil | Self::DiscreteInput)
    }

    /// True if the master may write this table.
    pub fn is_writable(self) -> bool {
        matches!(self, Self::Coil | Self::Holding)
    }

    /// The read function code for this table.
    pub fn read_function(self) -> u8 {
        match self {
            Self::Coil => 1,
            Self::DiscreteInput => 2,
            Self::Holding => 3,
            Self::Input => 4,
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Coil => "coil",
            Self::DiscreteInput => "discrete_input",
            Self::Holding => "holding",
            Self::Input => "input",
        })
    }
}

/// Byte and word order of multi-byte values, named after where the bytes `A B C D` of a
/// big-endian 32-bit value end up (`A` = most significant byte).
///
/// - `ABCD`: big endian, high word first (Modbus default; e.g. Eastron SDM meters).
/// - `CDAB`: low word first, bytes big endian inside each register ("word swapped").
/// - `BADC`: high word first, bytes swapped inside each register.
/// - `DCBA`: fully little endian.
///
/// For 64-bit values "low word first" reverses all four registers (`GH EF CD AB` for `CDAB`).
/// For 16-bit values only the byte swap (`BADC`, `DCBA`) matters. For strings the word order
/// is ignored: `ABCD`/`CDAB` put the first character in the high byte of each register,
/// `BADC`/`DCBA` in the low byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Order {
    /// Big endian, high word first.
    #[default]
    #[serde(alias = "abcd", alias = "big")]
    ABCD,
    /// Low word first, big-endian bytes within each register.
    #[serde(alias = "cdab", alias = "word_swap")]
    CDAB,
    /// High word first, bytes swapped within each register.
    #[serde(alias = "badc", alias = "byte_swap")]
    BADC,
    /// Fully little endian.
    #[serde(alias = "dcba", alias = "little")]
    DCBA,
}

impl Order {
    /// Every order, for tests and tools.
    pub const ALL: [Order; 4] = [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA];

    /// Registers are stored least significant word first.
    pub fn low_word_first(self) -> bool {
        matches!(self, Self::CDAB | Self::DCBA)
    }

    /// The two bytes inside each register are swapped.
    pub fn swap_bytes(self) -> bool {
        matches!(self, Self::BADC | Self::DCBA)
    }
}

/// The data type of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// A coil / discrete input bit, or a whole register read as `!= 0` (written as 0/1).
    Bool,
    /// Bit `n` (0 = least significant) of a register; written by read-modify-write.
    Bit(u8),
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 single precision, two registers.
    F32,
    /// IEEE 754 double precision, four registers.
    F64,
    /// Fixed-length string of `len` bytes (two per register, NUL padded).
    String {
        /// Length in bytes (characters); registers = `ceil(len / 2)`.
        len: u16,
    },
}

impl DataType {
    /// Number of registers (or bits, for the bit tables) the value occupies.
    pub fn registers(self) -> u16 {
        match self {
            Self::Bool | Self::Bit(_) | Self::U16 | Self::I16 => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
            Self::U64 | Self::I64 | Self::F64 => 4,
            Self::String { len } => len.div_ceil(2),
        }
    }

    /// True for types decoded to a number (and thus subject to scale and offset).
    pub fn is_numeric(self) -> bool {
        !matches!(self, Self::Bool | Self::Bit(_) | Self::String { .. })
    }

    /// True for the integer types.
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            Self::U16 | Self::I16 | Self::U32 | Self::I32 | Self::U64 | Self::I64
        )
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool => f.write_str("bool"),
            Self::Bit(n) => write!(f, "bit {n}"),
            Self::U16 => f.write_str("u16"),
            Self::I16 => f.write_str("i16"),
            Self::U32 => f.write_str("u32"),
            Self::I32 => f.write_str("i32"),
            Self::U64 => f.write_str("u64"),
            Self::I64 => f.write_str("i64"),
            Self::F32 => f.write_str("f32"),
            Self::F64 => f.write_str("f64"),
            Self::String { len } => write!(f, "string({len})"),
        }
    }
}

/// One typed value on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PointDef", into = "PointDef")]
pub struct Point {
    /// Name, unique within a device (becomes the twin property name).
    pub name: String,
    /// The table the value lives in.
    pub table: Table,
    /// Zero-based protocol (PDU) address: manual register "40101" is `table = "holding", address = 100`.
    pub address: u16,
    /// Data type.
    pub data_type: DataType,
    /// Byte and word order.
    pub order: Order,
    /// `value = raw * scale + offset` (numeric types only).
    pub scale: f64,
    /// See `scale`.
    pub offset: f64,
    /// Engineering unit label, informative only.
    pub unit: Option<String>,
    /// May be written (only coils and holding registers).
    pub writable: bool,
    /// Write with fc 15/16 even for a single coil/register (some devices lack fc 5/6).
    pub write_multiple: bool,
}

/// Why a point definition is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointDefError {
    /// The data type cannot live in that table.
    #[error("point `{name}`: type {data_type} cannot live in the {table} table")]
    TypeTable {
        /// Point name.
        name: String,
        /// Data type.
        data_type: DataType,
        /// Table.
        table: Table,
    },
    /// The table is read-only.
    #[error("point `{name}`: the {table} table is read-only, `writable = true` is not possible")]
    ReadOnlyTable {
        /// Point name.
        name: String,
        /// Table.
        table: Table,
    },
    /// Missing or out-of-range parameter.
    #[error("point `{name}`: {message}")]
    Invalid {
        /// Point name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

impl Point {
    /// Builds and validates a point with default order, scale 1, offset 0, read-only.
    pub fn new(
        name: impl Into<String>,
        table: Table,
        address: u16,
        data_type: DataType,
    ) -> Result<Self, PointDefError> {
        Self {
            name: name.into(),
            table,
            address,
            data_type,
            order: Order::ABCD,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            writable: false,
            write_multiple: false,
        }
        .validated()
    }

    /// Checks the invariants every constructor must uphold.
    pub fn validated(self) -> Result<Self, PointDefError> {
        let invalid = |message: String| PointDefError::Invalid {
            name: self.name.clone(),
            message,
        };
        if self.name.is_empty() {
            return Err(invalid("name must not be empty".into()));
        }
        if self.table.is_bits() && self.data_type != DataType::Bool {
            return Err(PointDefError::TypeTable {
                name: self.name.clone(),
                data_type: self.data_type,
                table: self.table,
            });
        }
        if self.writable && !self.table.is_writable() {
            return Err(PointDefError::ReadOnlyTable {
                name: self.name.clone(),
                table: self.table,
            });
        }
        match self.data_type {
            DataType::Bit(n) if n > 15 => {
                return Err(invalid(format!("bit {n} out of range 0..=15")));
            }
            DataType::String { len } if len == 0 || len > 2 * MAX_POINT_REGISTERS => {
                return Err(invalid(format!(
                    "string length {len} out of range 1..={}",
                    2 * MAX_POINT_REGISTERS
                )));
            }
            _ => {}
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(invalid(format!(
                "scale {} must be finite and non-zero",
                self.scale
            )));
        }
        if !self.offset.is_finite() {
            return Err(invalid(format!("offset {} must be finite", self.offset)));
        }
        if !self.data_type.is_numeric() && self.is_scaled() {
            return Err(invalid(format!(
                "scale/offset only apply to numeric types, not {}",
                self.data_type
            )));
        }
        if u32::from(self.address) + u32::from(self.count()) > 0x1_0000 {
            return Err(invalid(format!(
                "address {} + {} registers runs past 65535",
                self.address,
                self.count()
            )));
        }
        Ok(self)
    }

    /// Number of registers (register tables) or bits (bit tables) to read.
    pub fn count(&self) -> u16 {
        self.data_type.registers()
    }

    /// True if scale or offset change the raw value.
    pub fn is_scaled(&self) -> bool {
        // Exact comparison on purpose: only the literal defaults mean "unscaled".
        self.scale.to_bits() != 1.0f64.to_bits() || self.offset != 0.0
    }

    /// Sets the order (builder style, for code and tests).
    #[must_use]
    pub fn with_order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Sets scale and offset (builder style). Call [`Point::validated`] if they come from input.
    #[must_use]
    pub fn with_scale(mut self, scale: f64, offset: f64) -> Self {
        self.scale = scale;
        self.offset = offset;
        self
    }

    /// Marks the point writable (builder style).
    #[must_use]
    pub fn with_writable(mut self, writable: bool) -> Self {
        self.writable = writable;
        self
    }

    /// Writes with fc 15/16 even for a single coil or register (builder style; for devices
    /// without fc 5/6).
    #[must_use]
    pub fn with_write_multiple(mut self, write_multiple: bool) -> Self {
        self.write_multiple = write_multiple;
        self
    }

    /// Whether `a` and `b` are the same value for this point (see [`crate::codec::same_value`]):
    /// compare a desired value with a write's read-back with this, not with `==` (an f32
    /// point reads `0.1` back as `0.100000001490116…`).
    pub fn same_value(&self, a: &Value, b: &Value) -> bool {
        crate::codec::same_value(self, a, b)
    }
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// Bool and bit points.
    Bool(bool),
    /// Unscaled unsigned integers.
    U64(u64),
    /// Unscaled signed integers.
    I64(i64),
    /// Floats and every scaled numeric point.
    F64(f64),
    /// String points.
    String(String),
}

impl Value {
    /// Converts a JSON value (e.g. a desired twin property) into a value; `None` for
    /// objects, arrays and null.
    pub fn from_json(json: &serde_json::Value) -> Option<Self> {
        match json {
            serde_json::Value::Bool(b) => Some(Self::Bool(*b)),
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(Self::U64)
                .or_else(|| n.as_i64().map(Self::I64))
                .or_else(|| n.as_f64().map(Self::F64)),
            serde_json::Value::String(s) => Some(Self::String(s.clone())),
            _ => None,
        }
    }

    /// Converts into JSON; non-finite floats become `null` (JSON has no NaN).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Bool(b) => serde_json::Value::Bool(*b),
            Self::U64(u) => serde_json::Value::from(*u),
            Self::I64(i) => serde_json::Value::from(*i),
            Self::F64(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Self::String(s) => serde_json::Value::String(s.clone()),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::U64(u) => write!(f, "{u}"),
            Self::I64(i) => write!(f, "{i}"),
            Self::F64(x) => write!(f, "{x}"),
            Self::String(s) => write!(f, "{s:?}"),
        }
    }
}

/// The serialised shape of a point (flat, as written in TOML).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointDef {
    name: String,
    table: Table,
    address: u16,
    #[serde(rename = "type")]
    type_name: TypeName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bit: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    length: Option<u16>,
    #[serde(default)]
    order: Order,
    #[serde(default = "one")]
    scale: f64,
    #[serde(default)]
    offset: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
    #[serde(default)]
    writable: bool,
    #[serde(default)]
    write_multiple: bool,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TypeName {
    Bool,
    Bit,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
}

impl TryFrom<PointDef> for Point {
    type Error = PointDefError;

    fn try_from(def: PointDef) -> Result<Self, Self::Error> {
        let invalid = |message: &str| PointDefError::Invalid {
            name: def.name.clone(),
            message: message.into(),
        };
        if def.bit.is_some() && !matches!(def.type_name, TypeName::Bit) {
            return Err(invalid("`bit` only applies to type = \"bit\""));
        }
        if def.length.is_some() && !matches!(def.type_name, TypeName::String) {
            return Err(invalid("`length` only applies to type = \"string\""));
        }
        let data_type = match def.type_name {
            TypeName::Bool => DataType::Bool,
            TypeName::Bit => DataType::Bit(
                def.bit
                    .ok_or_else(|| invalid("type = \"bit\" needs `bit = 0..15`"))?,
            ),
            TypeName::U16 => DataType::U16,
            TypeName::I16 => DataType::I16,
            TypeName::U32 => DataType::U32,
            TypeName::I32 => DataType::I32,
            TypeName::U64 => DataType::U64,
            TypeName::I64 => DataType::I64,
            TypeName::F32 => DataType::F32,
            TypeName::F64 => DataType::F64,
            TypeName::String => DataType::String {
                len: def.length.ok_or_else(|| {
                    invalid("type = \"string\" needs `length` (in bytes/characters)")
                })?,
            },
        };
        Point {
            name: def.name,
            table: def.table,
            address: def.address,
            data_type,
            order: def.order,
            scale: def.scale,
            offset: def.offset,
            unit: def.unit,
            writable: def.writable,
            write_multiple: def.write_multiple,
        }
        .validated()
    }
}

impl From<Point> for PointDef {
    fn from(p: Point) -> Self {
        let (type_name, bit, length) = match p.data_type {
            DataType::Bool => (TypeName::Bool, None, None),
            DataType::Bit(n) => (TypeName::Bit, Some(n), None),
            DataType::U16 => (TypeName::U16, None, None),
            DataType::I16 => (TypeName::I16, None, None),
            DataType::U32 => (TypeName::U32, None, None),
            DataType::I32 => (TypeName::I32, None, None),
            DataType::U64 => (TypeName::U64, None, None),
            DataType::I64 => (TypeName::I64, None, None),
            DataType::F32 => (TypeName::F32, None, None),
            DataType::F64 => (TypeName::F64, None, None),
            DataType::String { len } => (TypeName::String, None, Some(len)),
        };
        PointDef {
            name: p.name,
            table: p.table,
            address: p.address,
            type_name,
            bit,
            length,
            order: p.order,
            scale: p.scale,
            offset: p.offset,
            unit: p.unit,
            writable: p.writable,
            write_multiple: p.write_multiple,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Doc {
        table: Table,
    }

    fn parse(name: &str) -> Table {
        toml::from_str::<Doc>(&format!("table = \"{name}\""))
            .unwrap_or_else(|e| panic!("`{name}`: {e}"))
            .table
    }

    #[test]
    fn table_names_round_trip_and_aliases_parse() {
        for (table, aliases) in [
            (Table::Coil, &["coils"][..]),
            (Table::DiscreteInput, &["discrete", "discrete_inputs"]),
            (Table::Holding, &["holding_register", "holding_registers"]),
            (Table::Input, &["input_register", "input_registers"]),
        ] {
            let text = toml::to_string(&Doc { table }).expect("a table serialises");
            assert_eq!(text.trim(), format!("table = \"{table}\""));
            assert_eq!(parse(&table.to_string()), table);
            for alias in aliases {
                assert_eq!(parse(alias), table, "{alias}");
            }
        }
        assert!(toml::from_str::<Doc>("table = \"register\"").is_err());
    }
}
