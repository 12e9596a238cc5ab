//! Property tests: decode(encode(v)) == v for every data type and order, and the inverse on
//! raw registers for scaled points; encoding rejects what does not fit.

// Test helpers are test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use device_protocols::codec::{
    EncodeError, WriteData, apply_bit, decode_registers, encode, normalize, same_value,
};
use device_protocols::point::{DataType, Order, Point, Table, Value};
use proptest::prelude::*;

fn point(data_type: DataType, order: Order) -> Point {
    Point::new("p", Table::Holding, 10, data_type)
        .unwrap()
        .with_order(order)
        .with_writable(true)
}

fn regs(data: WriteData) -> Vec<u16> {
    match data {
        WriteData::Registers(r) => r,
        other => panic!("expected registers, got {other:?}"),
    }
}

fn order() -> impl Strategy<Value = Order> {
    prop::sample::select(Order::ALL.to_vec())
}

fn roundtrip(p: &Point, v: &Value) -> Value {
    let r = regs(encode(p, v).unwrap());
    assert_eq!(
        r.len(),
        usize::from(p.count()),
        "register count for {}",
        p.data_type
    );
    decode_registers(p, &r).unwrap()
}

proptest! {
    /// A write's read-back (the written value after the point's own encoding) is the same
    /// value for the point, whatever precision or scale it loses; normalising is idempotent.
    #[test]
    fn read_backs_compare_equal_in_the_points_own_type(
        o in order(),
        v in -1.0e30f64..1.0e30,
        scale in prop::sample::select(vec![1.0, 0.1, 0.01, 0.5]),
        offset in prop::sample::select(vec![0.0, -40.0]),
    ) {
        let f32p = point(DataType::F32, o);
        let back = normalize(&f32p, &Value::F64(v)).unwrap();
        prop_assert_eq!(&back, &roundtrip(&f32p, &Value::F64(v)));
        prop_assert!(same_value(&f32p, &Value::F64(v), &back));
        prop_assert!(f32p.same_value(&back, &Value::F64(v)));
        prop_assert_eq!(normalize(&f32p, &back).unwrap(), back);

        let scaled = point(DataType::I32, o).with_scale(scale, offset);
        let w = (v / 1.0e22).clamp(-1.0e6, 1.0e6);
        // Scale 1 with offset 0 is an unscaled integer point: it takes whole numbers only.
        let w = if scaled.is_scaled() { w } else { w.round() };
        let back = normalize(&scaled, &Value::F64(w)).unwrap();
        prop_assert!(same_value(&scaled, &Value::F64(w), &back), "{} vs {:?}", w, back);
        prop_assert_eq!(normalize(&scaled, &back).unwrap(), back);
    }

    #[test]
    fn unsigned_integers_roundtrip(o in order(), a in any::<u16>(), b in any::<u32>(), c in any::<u64>()) {
        for (t, v) in [(DataType::U16, u64::from(a)), (DataType::U32, u64::from(b)), (DataType::U64, c)] {
            let p = point(t, o);
            prop_assert_eq!(roundtrip(&p, &Value::U64(v)), Value::U64(v));
        }
    }

    #[test]
    fn signed_integers_roundtrip(o in order(), a in any::<i16>(), b in any::<i32>(), c in any::<i64>()) {
        for (t, v) in [(DataType::I16, i64::from(a)), (DataType::I32, i64::from(b)), (DataType::I64, c)] {
            let p = point(t, o);
            prop_assert_eq!(roundtrip(&p, &Value::I64(v)), Value::I64(v));
        }
    }

    #[test]
    fn floats_roundtrip_bit_exact_nan_stays_nan(o in order(), a in any::<f32>(), b in any::<f64>()) {
        // Float rules: every f32/f64 (NaN, ±inf, -0.0, subnormals) survives bit for bit.
        let Value::F64(got) = roundtrip(&point(DataType::F32, o), &Value::F64(f64::from(a))) else { panic!() };
        // (NaN stays NaN; a signalling NaN may come back quieted by the f32/f64 conversion.)
        if a.is_nan() { prop_assert!(got.is_nan()) } else { prop_assert_eq!((got as f32).to_bits(), a.to_bits()) }
        let Value::F64(got) = roundtrip(&point(DataType::F64, o), &Value::F64(b)) else { panic!() };
        prop_assert_eq!(got.to_bits(), b.to_bits());
    }

    #[test]
    fn any_registers_survive_decode_then_encode(o in order(), raw in prop::collection::vec(any::<u16>(), 4)) {
        // Every register pattern decodes to a value that encodes back to the same registers
        // (for the types where every pattern is a distinct value).
        for t in [DataType::U16, DataType::I16, DataType::U32, DataType::I32, DataType::U64, DataType::I64, DataType::F64] {
            let p = point(t, o);
            let n = usize::from(p.count());
            let v = decode_registers(&p, &raw[..n]).unwrap();
            prop_assert_eq!(regs(encode(&p, &v).unwrap()), raw[..n].to_vec(), "{} {:?}", t, o);
        }
    }

    #[test]
    fn scaled_points_invert_on_the_raw_grid(
        o in order(),
        raw in -1_000_000i32..1_000_000,
        scale in prop::sample::select(vec![0.1, 0.01, 0.5, 2.0, 10.0, -0.1, 0.001]),
        offset in prop::sample::select(vec![0.0, -40.0, 273.15, 1000.0]),
    ) {
        let p = point(DataType::I32, o).with_scale(scale, offset).validated().unwrap();
        let regs_in = regs(encode(&point(DataType::I32, o), &Value::I64(raw.into())).unwrap());
        let v = decode_registers(&p, &regs_in).unwrap();
        let Value::F64(x) = v else { panic!("scaled values are floats") };
        prop_assert!((x - (f64::from(raw) * scale + offset)).abs() < 1e-6);
        // encode(decode(r)) == r, and decode(encode(v)) == v on the grid.
        prop_assert_eq!(regs(encode(&p, &v).unwrap()), regs_in.clone());
        prop_assert_eq!(decode_registers(&p, &regs(encode(&p, &v).unwrap())).unwrap(), v);
    }

    #[test]
    fn scaled_values_round_to_nearest_step(v in -3000.0f64..3000.0) {
        let p = point(DataType::I16, Order::ABCD).with_scale(0.1, 0.0).validated().unwrap();
        let got = decode_registers(&p, &regs(encode(&p, &Value::F64(v)).unwrap())).unwrap();
        let Value::F64(got) = got else { panic!() };
        prop_assert!((got - v).abs() <= 0.05 + 1e-9, "{v} -> {got}");
    }

    #[test]
    fn strings_roundtrip(o in order(), len in 1u16..40, s in "[ -~]{0,40}") {
        let p = point(DataType::String { len }, o);
        let s: String = s.chars().take(usize::from(len)).collect();
        prop_assert_eq!(roundtrip(&p, &Value::String(s.clone())), Value::String(s));
    }

    #[test]
    fn unicode_strings_roundtrip(o in order(), s in "\\PC{0,10}") {
        prop_assume!(!s.contains('\0'));
        let p = point(DataType::String { len: 64 }, o);
        prop_assert_eq!(roundtrip(&p, &Value::String(s.clone())), Value::String(s));
    }

    #[test]
    fn out_of_range_integers_are_rejected(o in order(), v in 65_536u64..) {
        let err = encode(&point(DataType::U16, o), &Value::U64(v)).unwrap_err();
        let is_range = matches!(err, EncodeError::OutOfRange { .. });
        prop_assert!(is_range);
    }

    #[test]
    fn bits_roundtrip(reg in any::<u16>(), bit in 0u8..16, set in any::<bool>()) {
        let p = Point::new("b", Table::Holding, 0, DataType::Bit(bit)).unwrap();
        let new = apply_bit(reg, bit, set);
        prop_assert_eq!(decode_registers(&p, &[new]).unwrap(), Value::Bool(set));
        // Other bits untouched.
        prop_assert_eq!(new & !(1 << bit), reg & !(1 << bit));
        prop_assert_eq!(encode(&p, &Value::Bool(set)).unwrap(), WriteData::Bit { bit, set });
    }
}

#[test]
fn every_order_places_bytes_as_named() {
    let cases = [
        (Order::ABCD, [0x1122, 0x3344]),
        (Order::CDAB, [0x3344, 0x1122]),
        (Order::BADC, [0x2211, 0x4433]),
        (Order::DCBA, [0x4433, 0x2211]),
    ];
    for (o, want) in cases {
        let p = point(DataType::U32, o);
        assert_eq!(
            regs(encode(&p, &Value::U64(0x1122_3344)).unwrap()),
            want,
            "{o:?}"
        );
    }
    let cases64 = [
        (Order::ABCD, [0x1122, 0x3344, 0x5566, 0x7788]),
        (Order::CDAB, [0x7788, 0x5566, 0x3344, 0x1122]),
        (Order::BADC, [0x2211, 0x4433, 0x6655, 0x8877]),
        (Order::DCBA, [0x8877, 0x6655, 0x4433, 0x2211]),
    ];
    for (o, want) in cases64 {
        let p = point(DataType::U64, o);
        assert_eq!(
            regs(encode(&p, &Value::U64(0x1122_3344_5566_7788)).unwrap()),
            want,
            "{o:?}"
        );
    }
    // 16-bit: only the byte swap matters.
    assert_eq!(
        regs(encode(&point(DataType::U16, Order::CDAB), &Value::U64(0x1234)).unwrap()),
        [0x1234]
    );
    assert_eq!(
        regs(encode(&point(DataType::U16, Order::DCBA), &Value::U64(0x1234)).unwrap()),
        [0x3412]
    );
}

#[test]
fn encoding_rejects_what_does_not_fit_with_clear_errors() {
    let u16p = point(DataType::U16, Order::ABCD);
    assert_eq!(
        encode(&u16p, &Value::I64(-1)).unwrap_err().to_string(),
        "value -1 is out of range for u16: raw -1 not in 0..=65535 (scale 1, offset 0)"
    );
    let scaled = u16p.clone().with_scale(0.1, 0.0);
    assert_eq!(
        encode(&scaled, &Value::F64(7000.0))
            .unwrap_err()
            .to_string(),
        "value 7000 is out of range for u16: raw 70000 not in 0..=65535 (scale 0.1, offset 0)"
    );
    assert!(encode(&scaled, &Value::F64(6553.5)).is_ok());
    assert!(matches!(
        encode(&u16p, &Value::F64(f64::NAN)),
        Err(EncodeError::NotFinite { .. })
    ));
    assert!(matches!(
        encode(&scaled, &Value::F64(f64::INFINITY)),
        Err(EncodeError::NotFinite { .. })
    ));
    assert_eq!(
        encode(&u16p, &Value::F64(21.5)).unwrap_err().to_string(),
        "21.5 is not an integer (u16 point without scale)"
    );
    assert!(matches!(
        encode(&u16p, &Value::String("1".into())),
        Err(EncodeError::TypeMismatch { .. })
    ));
    assert!(matches!(
        encode(&point(DataType::I64, Order::ABCD), &Value::U64(u64::MAX)),
        Err(EncodeError::OutOfRange { .. })
    ));
    assert!(matches!(
        encode(
            &point(DataType::U64, Order::ABCD),
            &Value::F64(18_446_744_073_709_551_616.0)
        ),
        Err(EncodeError::OutOfRange { .. })
    ));
    assert_eq!(
        encode(&point(DataType::F32, Order::ABCD), &Value::F64(1e39))
            .unwrap_err()
            .to_string(),
        "value 1000000000000000000000000000000000000000 is out of range for f32: raw 1000000000000000000000000000000000000000 not in -340282346638528860000000000000000000000..=340282346638528860000000000000000000000 (scale 1, offset 0)"
    );
    let s = point(DataType::String { len: 4 }, Order::ABCD);
    assert_eq!(
        encode(&s, &Value::String("hello".into()))
            .unwrap_err()
            .to_string(),
        "string of 5 bytes does not fit the 4-byte field"
    );
    assert_eq!(
        encode(&s, &Value::String("a\0b".into())),
        Err(EncodeError::StringNul)
    );
    assert!(matches!(
        encode(&s, &Value::U64(1)),
        Err(EncodeError::TypeMismatch { .. })
    ));
}

#[test]
fn same_value_compares_in_the_points_representation() {
    let f = point(DataType::F32, Order::ABCD);
    let back = normalize(&f, &Value::F64(0.1)).unwrap();
    assert_ne!(back, Value::F64(0.1), "f32 cannot hold 0.1");
    assert!(same_value(&f, &Value::F64(0.1), &back));
    assert!(!same_value(&f, &Value::F64(0.1), &Value::F64(0.2)));
    // Integers and floats of the same number; strings with their padding.
    let u = point(DataType::U16, Order::ABCD);
    assert!(same_value(&u, &Value::U64(7), &Value::F64(7.0)));
    assert!(same_value(&u, &Value::I64(7), &Value::U64(7)));
    assert!(!same_value(&u, &Value::U64(7), &Value::U64(8)));
    // Values that do not fit are never the same.
    assert!(!same_value(&u, &Value::U64(70_000), &Value::U64(70_000)));
    let s = point(DataType::String { len: 6 }, Order::ABCD);
    assert_eq!(
        normalize(&s, &Value::String("ab".into())),
        Ok(Value::String("ab".into()))
    );
    // Scale: 22.45 at 0.1 is written as 225 and reads back as 22.5.
    let scaled = point(DataType::U16, Order::ABCD).with_scale(0.1, 0.0);
    assert_eq!(normalize(&scaled, &Value::F64(22.45)), Ok(Value::F64(22.5)));
    assert!(scaled.same_value(&Value::F64(22.45), &Value::F64(22.5)));
    // Bits and coils.
    let bit = point(DataType::Bit(3), Order::ABCD);
    assert_eq!(normalize(&bit, &Value::U64(1)), Ok(Value::Bool(true)));
    let coil = Point::new("c", Table::Coil, 0, DataType::Bool).unwrap();
    assert!(same_value(&coil, &Value::U64(0), &Value::Bool(false)));
}

/// Found by the `modbus_decode` fuzz target: a scaled u64 point with a raw value beyond 2^53
/// did not compare equal to its own read-back (`raw → f64 → raw` moved a few f64 steps), so
/// a successful write would have been acknowledged as failed.
#[test]
fn huge_scaled_64_bit_values_compare_equal_to_their_read_back() {
    for data_type in [DataType::U64, DataType::I64] {
        let p = point(data_type, Order::CDAB)
            .with_scale(0.01, -40.0)
            .validated()
            .unwrap();
        let regs_in = [0xcbff, 0xffff, 0xffff, 0xa200];
        let v = decode_registers(&p, &regs_in).unwrap();
        let back = decode_registers(&p, &regs(encode(&p, &v).unwrap())).unwrap();
        assert!(
            same_value(&p, &v, &back),
            "{data_type}: {v} read back as {back}"
        );
        // Still exact where the f64 resolves the raw value, and far values still differ.
        assert!(!same_value(
            &p,
            &Value::F64(1.0e9),
            &Value::F64(1.0e9 + 0.01)
        ));
        assert!(!same_value(&p, &v, &Value::F64(1.0e9)));
    }
}

#[test]
fn bools_accept_zero_and_one() {
    let coil = Point::new("c", Table::Coil, 0, DataType::Bool).unwrap();
    assert_eq!(
        encode(&coil, &Value::U64(1)).unwrap(),
        WriteData::Coil(true)
    );
    assert_eq!(
        encode(&coil, &Value::F64(0.0)).unwrap(),
        WriteData::Coil(false)
    );
    assert!(encode(&coil, &Value::U64(2)).is_err());
    let reg = point(DataType::Bool, Order::ABCD);
    assert_eq!(
        encode(&reg, &Value::Bool(true)).unwrap(),
        WriteData::Registers(vec![1])
    );
    assert_eq!(
        decode_registers(&reg, &[0x8000]).unwrap(),
        Value::Bool(true)
    );
}

#[test]
fn short_input_is_an_error_not_a_panic() {
    let p = point(DataType::F64, Order::ABCD);
    assert_eq!(
        decode_registers(&p, &[1, 2]).unwrap_err().to_string(),
        "need 4 registers, got 2"
    );
}
