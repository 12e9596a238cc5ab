//! Modbus answer decoding (and the encoder it must invert).
//!
//! Input: byte 0 picks the data type, byte 1 the order and table, byte 2 the scale; the rest
//! is the answer's registers (big-endian pairs) or bits.
//! Invariants: decoding never panics, whatever the answer's length; an answer too short is
//! `DecodeError::Short`; for unscaled integer points `encode(decode(regs)) == regs` exactly;
//! for every point whose decoded value encodes, decoding the encoding gives the same value
//! for the point (`same_value`), and `normalize` is idempotent.
#![no_main]

use device_protocols::codec::{self, DecodeError, WriteData};
use device_protocols::point::{DataType, Order, Point, Table, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [ty, layout, scale, rest @ ..] = data else {
        return;
    };
    let data_type = match ty % 12 {
        0 => DataType::Bool,
        1 => DataType::Bit(ty / 12 % 16),
        2 => DataType::U16,
        3 => DataType::I16,
        4 => DataType::U32,
        5 => DataType::I32,
        6 => DataType::U64,
        7 => DataType::I64,
        8 => DataType::F32,
        9 => DataType::F64,
        _ => DataType::String {
            len: u16::from(ty / 12 % 21) + 1,
        },
    };
    let order = Order::ALL[usize::from(layout & 3)];
    let table = match (layout >> 2) & 3 {
        0 if data_type == DataType::Bool => Table::Coil,
        1 if data_type == DataType::Bool => Table::DiscreteInput,
        2 => Table::Input,
        _ => Table::Holding,
    };
    let (scale, offset) = match scale % 6 {
        0 | 1 => (1.0, 0.0),
        2 => (0.1, 0.0),
        3 => (0.01, -40.0),
        4 => (10.0, 0.5),
        _ => (-0.5, 0.0),
    };
    let Ok(point) = Point::new("p", table, 0, data_type) else {
        return;
    };
    let point = point.with_order(order).with_writable(table.is_writable());
    let point = if data_type.is_numeric() {
        match point.with_scale(scale, offset).validated() {
            Ok(p) => p,
            Err(_) => return,
        }
    } else {
        point
    };

    let regs: Vec<u16> = rest
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let bits: Vec<bool> = rest.iter().map(|b| b & 1 == 1).collect();

    let decoded = if table.is_bits() {
        codec::decode_bits(&point, &bits)
    } else {
        let _ = codec::decode_bits(&point, &bits);
        codec::decode_registers(&point, &regs)
    };
    let value = match decoded {
        Ok(v) => v,
        Err(DecodeError::Short { .. }) => {
            let have = if table.is_bits() {
                bits.len()
            } else {
                regs.len()
            };
            assert!(have < usize::from(point.count()));
            return;
        }
        Err(e) => panic!("unexpected {e}"),
    };
    let _ = value.to_json();
    let _ = value.to_string();

    let Ok(written) = codec::encode(&point, &value) else {
        return;
    };
    let need = usize::from(point.count());
    if data_type.is_integer() && !point.is_scaled() {
        assert_eq!(
            written,
            WriteData::Registers(regs[..need].to_vec()),
            "{value}"
        );
    }
    let again = match &written {
        WriteData::Coil(b) | WriteData::Bit { set: b, .. } => Value::Bool(*b),
        WriteData::Registers(r) => {
            assert_eq!(r.len(), need);
            codec::decode_registers(&point, r).expect("an encoding decodes")
        }
    };
    if let Value::F64(f) = value {
        if f.is_nan() {
            return; // NaN is never the same value as itself
        }
    }
    assert!(point.same_value(&value, &again), "{value} became {again}");
    if let Ok(n) = codec::normalize(&point, &value) {
        let nn = codec::normalize(&point, &n).expect("a normalised value encodes");
        assert!(
            point.same_value(&n, &nn),
            "normalize not idempotent: {n} → {nn}"
        );
    }
});
