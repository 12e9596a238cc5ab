//! Register codecs: raw registers/bits ↔ typed [`Value`](crate::point::Value)s for a
//! [`Point`], in every byte and word order. Pure functions, no IO.
//!
//! Decoding: `value = raw * scale + offset`; unscaled integers stay exact integers
//! (`Value::U64` / `Value::I64`), everything scaled or floating is `Value::F64`.
//! Encoding inverts that, rounding `(value - offset) / scale` to the nearest raw integer for the
//! integer types, and rejects values that do not fit.

use std::fmt;

use crate::point::{DataType, Order, Point};

/// What to put on the wire for a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteData {
    /// One coil (fc 5, or fc 15 with `write_multiple`).
    Coil(bool),
    /// Whole registers starting at the point's address (fc 6 for one, fc 16 for more).
    Registers(Vec<u16>),
    /// One bit of a register: the writer reads the register, changes the bit and writes it
    /// back (read-modify-write; not atomic against the device's own changes).
    Bit {
        /// Bit number, 0 = least significant.
        bit: u8,
        /// New state.
        set: bool,
    },
}

/// Why registers could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer registers/bits than the data type needs.
    #[error("need {need} {what}, got {got}")]
    Short {
        /// Needed.
        need: u16,
        /// Received.
        got: usize,
        /// "registers" or "bits".
        what: &'static str,
    },
    /// Tried to decode a register point from bits or vice versa.
    #[error("{0} point cannot be decoded from {1}")]
    WrongTable(DataType, &'static str),
}

/// Why a value cannot be written to a point.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// The value has the wrong kind (e.g. a string for a `u16`).
    #[error("expected {expected}, got {got}")]
    TypeMismatch {
        /// What the point takes.
        expected: &'static str,
        /// The value given.
        got: String,
    },
    /// After scale and offset the raw value does not fit the data type.
    #[error(
        "value {value} is out of range for {data_type}: raw {raw} not in {min}..={max} (scale {scale}, offset {offset})"
    )]
    OutOfRange {
        /// Engineering value given.
        value: f64,
        /// Raw value it maps to.
        raw: f64,
        /// Data type.
        data_type: DataType,
        /// Smallest raw value.
        min: f64,
        /// Largest raw value.
        max: f64,
        /// Point scale.
        scale: f64,
        /// Point offset.
        offset: f64,
    },
    /// An unscaled integer point was given a fractional number.
    #[error("{value} is not an integer ({data_type} point without scale)")]
    NotAnInteger {
        /// Value given.
        value: f64,
        /// Data type.
        data_type: DataType,
    },
    /// NaN or infinity into an integer point.
    #[error("{value} cannot be written to an integer point ({data_type})")]
    NotFinite {
        /// Value given.
        value: f64,
        /// Data type.
        data_type: DataType,
    },
    /// String longer than the point's fixed length.
    #[error("string of {len} bytes does not fit the {max}-byte field")]
    StringTooLong {
        /// Bytes given (UTF-8).
        len: usize,
        /// Field length.
        max: u16,
    },
    /// NUL is the padding character and cannot be part of a value.
    #[error("string contains a NUL character")]
    StringNul,
}

/// Decodes the registers read for `point` (at least `point.count()` of them, starting at its
/// address). Extra registers are ignored.
pub fn decode_registers(point: &Point, regs: &[u16]) -> Result<crate::point::Value, DecodeError> {
    use crate::point::Value;
    let need = point.count();
    if regs.len() < usize::from(need) {
        return Err(DecodeError::Short {
            need,
            got: regs.len(),
            what: "registers",
        });
    }
    let regs = &regs[..usize::from(need)];
    let order = point.order;
    let raw = match point.data_type {
        DataType::Bool => return Ok(Value::Bool(regs[0] != 0)),
        DataType::Bit(n) => return Ok(Value::Bool(regs[0] >> n & 1 == 1)),
        DataType::String { len } => return Ok(Value::String(decode_string(regs, len, order))),
        DataType::U16 => Raw::U(u64::from(u16::from_be_bytes(bytes::<2>(regs, order)))),
        DataType::I16 => Raw::I(i64::from(i16::from_be_bytes(bytes::<2>(regs, order)))),
        DataType::U32 => Raw::U(u64::from(u32::from_be_bytes(bytes::<4>(regs, order)))),
        DataType::I32 => Raw::I(i64::from(i32::from_be_bytes(bytes::<4>(regs, order)))),
        DataType::U64 => Raw::U(u64::from_be_bytes(bytes::<8>(regs, order))),
        DataType::I64 => Raw::I(i64::from_be_bytes(bytes::<8>(regs, order))),
        DataType::F32 => Raw::F(f64::from(f32::from_be_bytes(bytes::<4>(regs, order)))),
        DataType::F64 => Raw::F(f64::from_be_bytes(bytes::<8>(regs, order))),
    };
    Ok(if point.is_scaled() {
        Value::F64(unscale(point, raw.as_f64()))
    } else {
        match raw {
            Raw::U(u) => Value::U64(u),
            Raw::I(i) => Value::I64(i),
            Raw::F(f) => Value::F64(f),
        }
    })
}

/// Decodes the bits read for a coil / discrete input point.
pub fn decode_bits(point: &Point, bits: &[bool]) -> Result<crate::point::Value, DecodeError> {
    if point.data_type != DataType::Bool {
        return Err(DecodeError::WrongTable(point.data_type, "bits"));
    }
    bits.first()
        .map(|b| crate::point::Value::Bool(*b))
        .ok_or(DecodeError::Short {
            need: 1,
            got: 0,
            what: "bits",
        })
}

/// Encodes `value` for a write to `point`.
pub fn encode(point: &Point, value: &crate::point::Value) -> Result<WriteData, EncodeError> {
    use crate::point::Value;
    let order = point.order;
    match point.data_type {
        DataType::Bool => {
            let b = as_bool(value)?;
            Ok(if point.table.is_bits() {
                WriteData::Coil(b)
            } else {
                WriteData::Registers(vec![u16::from(b)])
            })
        }
        DataType::Bit(bit) => Ok(WriteData::Bit {
            bit,
            set: as_bool(value)?,
        }),
        DataType::String { len } => {
            let Value::String(s) = value else {
                return Err(mismatch("a string", value));
            };
            Ok(WriteData::Registers(encode_string(s, len, order)?))
        }
        DataType::F32 => {
            let raw = float_raw(point, value)?;
            let narrowed = raw as f32;
            if raw.is_finite() && !narrowed.is_finite() {
                return Err(out_of_range(
                    point,
                    value,
                    raw,
                    f64::from(f32::MIN),
                    f64::from(f32::MAX),
                ));
            }
            Ok(WriteData::Registers(words(&narrowed.to_be_bytes(), order)))
        }
        DataType::F64 => {
            let raw = float_raw(point, value)?;
            Ok(WriteData::Registers(words(&raw.to_be_bytes(), order)))
        }
        DataType::U16 => {
            let v = int_raw(point, value, 0, u64::from(u16::MAX).into())?;
            Ok(WriteData::Registers(words(
                &(v as u16).to_be_bytes(),
                order,
            )))
        }
        DataType::I16 => {
            let v = int_raw(point, value, i16::MIN.into(), i16::MAX.into())?;
            Ok(WriteData::Registers(words(
                &(v as i16).to_be_bytes(),
                order,
            )))
        }
        DataType::U32 => {
            let v = int_raw(point, value, 0, u32::MAX.into())?;
            Ok(WriteData::Registers(words(
                &(v as u32).to_be_bytes(),
                order,
            )))
        }
        DataType::I32 => {
            let v = int_raw(point, value, i32::MIN.into(), i32::MAX.into())?;
            Ok(WriteData::Registers(words(
                &(v as i32).to_be_bytes(),
                order,
            )))
        }
        DataType::U64 => {
            let v = int_raw(point, value, 0, u64::MAX.into())?;
            Ok(WriteData::Registers(words(
                &(v as u64).to_be_bytes(),
                order,
            )))
        }
        DataType::I64 => {
            let v = int_raw(point, value, i64::MIN.into(), i64::MAX.into())?;
            Ok(WriteData::Registers(words(
                &(v as i64).to_be_bytes(),
                order,
            )))
        }
    }
}

/// The value `point` holds after `value` is written to it: `value` encoded to the point's
/// representation and decoded back (an f32 point narrows `0.1` to `0.100000001490116…`, a
/// scaled integer point rounds `22.45` at scale 0.1 to `22.5`, a `u16` given `7.0` gives
/// `7`). What a read-back of a successful write returns, so a desired value can be compared
/// with it, or reported in the point's own precision.
pub fn normalize(
    point: &Point,
    value: &crate::point::Value,
) -> Result<crate::point::Value, EncodeError> {
    use crate::point::Value;
    Ok(match encode(point, value)? {
        WriteData::Coil(b) | WriteData::Bit { set: b, .. } => Value::Bool(b),
        // Registers encoded for this very point always decode (right count, right table);
        // should that ever fail, the given value is the best answer.
        WriteData::Registers(regs) => {
            decode_registers(point, &regs).unwrap_or_else(|_| value.clone())
        }
    })
}

/// Whether `a` and `b` are the same value *for this point*: both encode to the same
/// registers or bits. Compares a desired value with a read-back in the point's own type
/// (f32 precision, scale rounding, string padding; `7`, `7.0` and `7u64` alike). False when
/// either does not fit the point.
///
/// A scaled 64-bit integer point is the one case where equal encodings are too strict: its
/// engineering value is an `f64`, which cannot name every raw integer beyond 2^53, so a
/// value written and read back (`raw → f64 → raw`) may land a few f64 steps away. There raws
/// within `|raw| / 2^48` (a few f64 steps; zero below 2^48, so smaller raws still compare
/// exactly) are the same value.
pub fn same_value(point: &Point, a: &crate::point::Value, b: &crate::point::Value) -> bool {
    match (encode(point, a), encode(point, b)) {
        (Ok(enc_a), Ok(enc_b)) if enc_a == enc_b => true,
        (Ok(WriteData::Registers(regs_a)), Ok(WriteData::Registers(regs_b)))
            if point.is_scaled() && point.data_type.registers() == 4 =>
        {
            let raw = |regs: &[u16]| -> Option<i128> {
                let unscaled = Point {
                    scale: 1.0,
                    offset: 0.0,
                    ..point.clone()
                };
                match decode_registers(&unscaled, regs).ok()? {
                    crate::point::Value::U64(u) => Some(i128::from(u)),
                    crate::point::Value::I64(i) => Some(i128::from(i)),
                    _ => None, // f64: not an integer type, equal encodings only
                }
            };
            match (raw(&regs_a), raw(&regs_b)) {
                (Some(raw_a), Some(raw_b)) => {
                    (raw_a - raw_b).abs() <= raw_a.abs().max(raw_b.abs()) >> 48
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// Applies a [`WriteData::Bit`] change to the current register value.
pub fn apply_bit(current: u16, bit: u8, set: bool) -> u16 {
    if set {
        current | (1 << bit)
    } else {
        current & !(1 << bit)
    }
}

#[derive(Debug, Clone, Copy)]
enum Raw {
    U(u64),
    I(i64),
    F(f64),
}

impl Raw {
    fn as_f64(self) -> f64 {
        match self {
            Raw::U(u) => u as f64,
            Raw::I(i) => i as f64,
            Raw::F(f) => f,
        }
    }
}

/// Registers → big-endian byte array (`A` first) according to `order`.
fn bytes<const N: usize>(regs: &[u16], order: Order) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N / 2;
    for i in 0..n {
        let reg = if order.low_word_first() {
            regs[n - 1 - i]
        } else {
            regs[i]
        };
        let reg = if order.swap_bytes() {
            reg.swap_bytes()
        } else {
            reg
        };
        out[2 * i..2 * i + 2].copy_from_slice(&reg.to_be_bytes());
    }
    out
}

/// Big-endian bytes (`A` first) → registers according to `order`; the inverse of [`bytes`].
fn words(be: &[u8], order: Order) -> Vec<u16> {
    let mut regs: Vec<u16> = be
        .chunks_exact(2)
        .map(|c| {
            let reg = u16::from_be_bytes([c[0], c[1]]);
            if order.swap_bytes() {
                reg.swap_bytes()
            } else {
                reg
            }
        })
        .collect();
    if order.low_word_first() {
        regs.reverse();
    }
    regs
}

fn decode_string(regs: &[u16], len: u16, order: Order) -> String {
    let mut raw: Vec<u8> = regs
        .iter()
        .flat_map(|r| {
            let b = r.to_be_bytes();
            if order.swap_bytes() { [b[1], b[0]] } else { b }
        })
        .take(usize::from(len))
        .collect();
    while raw.last() == Some(&0) {
        raw.pop();
    }
    String::from_utf8_lossy(&raw).into_owned()
}

fn encode_string(s: &str, len: u16, order: Order) -> Result<Vec<u16>, EncodeError> {
    if s.len() > usize::from(len) {
        return Err(EncodeError::StringTooLong {
            len: s.len(),
            max: len,
        });
    }
    if s.contains('\0') {
        return Err(EncodeError::StringNul);
    }
    let mut raw = s.as_bytes().to_vec();
    raw.resize(usize::from(len.div_ceil(2)) * 2, 0);
    Ok(raw
        .chunks_exact(2)
        .map(|c| {
            if order.swap_bytes() {
                u16::from_be_bytes([c[1], c[0]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        })
        .collect())
}

fn mismatch(expected: &'static str, value: &crate::point::Value) -> EncodeError {
    EncodeError::TypeMismatch {
        expected,
        got: format!("{value}"),
    }
}

fn as_bool(value: &crate::point::Value) -> Result<bool, EncodeError> {
    use crate::point::Value;
    match value {
        Value::Bool(b) => Ok(*b),
        Value::U64(0) | Value::I64(0) => Ok(false),
        Value::U64(1) | Value::I64(1) => Ok(true),
        Value::F64(f) if *f == 0.0 => Ok(false),
        Value::F64(f) if f.to_bits() == 1.0f64.to_bits() => Ok(true),
        other => Err(mismatch("true/false (or 0/1)", other)),
    }
}

fn as_f64(value: &crate::point::Value) -> Result<f64, EncodeError> {
    use crate::point::Value;
    match value {
        Value::U64(u) => Ok(*u as f64),
        Value::I64(i) => Ok(*i as f64),
        Value::F64(f) => Ok(*f),
        other => Err(mismatch("a number", other)),
    }
}

fn out_of_range(
    point: &Point,
    value: &crate::point::Value,
    raw: f64,
    min: f64,
    max: f64,
) -> EncodeError {
    EncodeError::OutOfRange {
        value: as_f64(value).unwrap_or(f64::NAN),
        raw,
        data_type: point.data_type,
        min,
        max,
        scale: point.scale,
        offset: point.offset,
    }
}

/// `1 / scale` if it is an integer (scale 0.1, 0.01, …): dividing by it instead of
/// multiplying by the scale gives the decimal-looking result (`224 / 10 = 22.4`, where
/// `224 * 0.1 = 22.400000000000002`), and multiplying by it encodes `22.45` as 224.5 → 225
/// instead of `22.45 / 0.1 = 224.49999999999997` → 224.
fn inverse_scale(scale: f64) -> Option<f64> {
    let inv = 1.0 / scale;
    (scale.abs() < 1.0 && (inv - inv.round()).abs() < 1e-9 * inv.abs()).then(|| inv.round())
}

/// Raw → engineering value.
fn unscale(point: &Point, raw: f64) -> f64 {
    match inverse_scale(point.scale) {
        Some(inv) => raw / inv + point.offset,
        None => raw * point.scale + point.offset,
    }
}

/// Engineering value → raw (unrounded).
fn rescale(point: &Point, v: f64) -> f64 {
    match inverse_scale(point.scale) {
        Some(inv) => (v - point.offset) * inv,
        None => (v - point.offset) / point.scale,
    }
}

/// The raw float to store: `(value - offset) / scale`. NaN and infinities pass through.
fn float_raw(point: &Point, value: &crate::point::Value) -> Result<f64, EncodeError> {
    let v = as_f64(value)?;
    Ok(if point.is_scaled() {
        rescale(point, v)
    } else {
        v
    })
}

/// The raw integer to store, range-checked against `min..=max`.
fn int_raw(
    point: &Point,
    value: &crate::point::Value,
    min: i128,
    max: i128,
) -> Result<i128, EncodeError> {
    use crate::point::Value;
    if !point.is_scaled() {
        // Exact integer paths first: u64/i64 values beyond 2^53 must not go through f64.
        let exact: Option<i128> = match value {
            Value::U64(u) => Some(i128::from(*u)),
            Value::I64(i) => Some(i128::from(*i)),
            _ => None,
        };
        if let Some(v) = exact {
            return if (min..=max).contains(&v) {
                Ok(v)
            } else {
                Err(out_of_range(point, value, v as f64, min as f64, max as f64))
            };
        }
    }
    let v = as_f64(value)?;
    if !v.is_finite() {
        return Err(EncodeError::NotFinite {
            value: v,
            data_type: point.data_type,
        });
    }
    let raw = if point.is_scaled() {
        rescale(point, v).round()
    } else {
        if v.fract() != 0.0 {
            return Err(EncodeError::NotAnInteger {
                value: v,
                data_type: point.data_type,
            });
        }
        v
    };
    // `max as f64` rounds up to 2^64 / 2^63 for the 64-bit types, so compare with `<`
    // against the next power of two to stay exact.
    let upper = max as f64 + 1.0;
    if !raw.is_finite() || raw < min as f64 || raw >= upper {
        return Err(out_of_range(point, value, raw, min as f64, max as f64));
    }
    Ok(raw as i128)
}

impl fmt::Display for WriteData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Coil(b) => write!(f, "coil {b}"),
            Self::Registers(r) => write!(f, "registers {r:04X?}"),
            Self::Bit { bit, set } => write!(f, "bit {bit} = {set}"),
        }
    }
}
