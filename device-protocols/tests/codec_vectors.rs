//! Known vectors from real device manuals, and the TOML shape of points.

// Test helpers are test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use device_protocols::codec::{WriteData, decode_registers, encode};
use device_protocols::point::{DataType, Order, Point, Table, Value};

fn f32_point(order: Order) -> Point {
    Point::new("voltage", Table::Input, 0, DataType::F32)
        .unwrap()
        .with_order(order)
}

/// Eastron SDM320Y User Manual V1.0 (06-2018), "Read input register" example, p. 42:
/// reply `01 04 04 43 66 33 34 1B 38`, "43 66 33 34 (Hex) = 230.2 (Floating point)",
/// high word first (ABCD).
#[test]
fn eastron_sdm_voltage_230_2_abcd() {
    let v = decode_registers(&f32_point(Order::ABCD), &[0x4366, 0x3334]).unwrap();
    // The manual rounds for display; the exact f32 is one ulp above 230.2f32 (0x4366_3333).
    assert_eq!(v, Value::F64(230.200_012_207_031_25));
    assert_eq!(format!("{:.1}", 230.200_012_207_031_25_f64), "230.2");
}

/// The same SDM320Y reading as a device with "Intel" float order sends it: the GE EPM 4500
/// instruction manual (§4.1.7) puts the LOW 16 bits of a float in the first register (CDAB).
#[test]
fn low_word_first_meter_voltage_230_2_cdab() {
    let v = decode_registers(&f32_point(Order::CDAB), &[0x3334, 0x4366]).unwrap();
    assert_eq!(v, Value::F64(230.200_012_207_031_25));
    // And 230.5 V = 0x4366_8000 exactly.
    let v = decode_registers(&f32_point(Order::CDAB), &[0x8000, 0x4366]).unwrap();
    assert_eq!(v, Value::F64(230.5));
    assert_eq!(
        encode(&f32_point(Order::CDAB), &Value::F64(230.5)).unwrap(),
        WriteData::Registers(vec![0x8000, 0x4366])
    );
    assert_eq!(
        encode(&f32_point(Order::ABCD), &Value::F64(230.5)).unwrap(),
        WriteData::Registers(vec![0x4366, 0x8000])
    );
}

/// SDM320Y manual p. 42: holding register "pulse 1 output width" reply `42 C8 00 00` = 100,
/// and the write example "pulse constant = 100 imp/kWh" sends data `3F 80 00 00` (= 1.0).
#[test]
fn eastron_sdm_holding_vectors() {
    let p = Point::new("width", Table::Holding, 12, DataType::F32)
        .unwrap()
        .with_writable(true);
    assert_eq!(
        decode_registers(&p, &[0x42C8, 0x0000]).unwrap(),
        Value::F64(100.0)
    );
    assert_eq!(
        encode(&p, &Value::F64(1.0)).unwrap(),
        WriteData::Registers(vec![0x3F80, 0x0000])
    );
}

/// Bronkhorst EL-FLOW manual (Modbus chapter): strings are up to 16 bytes in 8 registers,
/// "the upper byte of the first register contains the first character", terminated with 0.
#[test]
fn string_upper_byte_first_nul_terminated() {
    let p = Point::new("tag", Table::Holding, 0, DataType::String { len: 16 }).unwrap();
    let regs = [0x464C, 0x4F57, 0x2D31, 0, 0, 0, 0, 0]; // "FLOW-1"
    assert_eq!(
        decode_registers(&p, &regs).unwrap(),
        Value::String("FLOW-1".into())
    );
    let swapped = p.clone().with_order(Order::BADC);
    assert_eq!(
        decode_registers(&swapped, &[0x4C46, 0x574F, 0x312D, 0, 0, 0, 0, 0]).unwrap(),
        Value::String("FLOW-1".into())
    );
}

#[test]
fn scaled_temperature_i16() {
    // A typical boiler: temperature in 0.1 °C as i16; 0xFF9C = -100 → -10.0 °C.
    let p = Point::new("t", Table::Input, 0, DataType::I16)
        .unwrap()
        .with_scale(0.1, 0.0);
    let Value::F64(t) = decode_registers(&p, &[0xFF9C]).unwrap() else {
        panic!()
    };
    assert!((t + 10.0).abs() < 1e-9);
}

#[derive(serde::Deserialize)]
struct Device {
    points: Vec<Point>,
}

#[test]
fn points_deserialise_from_the_agent_toml() {
    let d: Device = toml::from_str(
        r#"points = [
  { name = "temperature", table = "input", address = 0, type = "i16", scale = 0.1, unit = "°C" },
  { name = "setpoint", table = "holding", address = 100, type = "u16", scale = 0.1, writable = true, order = "CDAB" },
  { name = "energy", table = "holding", address = 200, type = "f64", order = "DCBA" },
  { name = "alarm", table = "holding", address = 5, type = "bit", bit = 3 },
  { name = "serial", table = "holding", address = 300, type = "string", length = 12 },
  { name = "pump", table = "coil", address = 0, type = "bool", writable = true, write_multiple = true },
  { name = "door", table = "discrete_input", address = 1, type = "bool" },
]"#,
    )
    .unwrap();
    let p = &d.points;
    assert_eq!(p[0].unit.as_deref(), Some("°C"));
    assert_eq!(p[1].order, Order::CDAB);
    assert!(p[1].writable);
    assert!((p[1].scale - 0.1).abs() < f64::EPSILON);
    assert_eq!(p[2].count(), 4);
    assert_eq!(p[3].data_type, DataType::Bit(3));
    assert_eq!(p[4].data_type, DataType::String { len: 12 });
    assert_eq!(p[4].count(), 6);
    assert!(p[5].write_multiple);
    assert_eq!(p[6].table, Table::DiscreteInput);
    // Serialises back to the same shape.
    let again: Point = toml::from_str(&toml::to_string(&p[1]).unwrap()).unwrap();
    assert_eq!(again, p[1]);
}

#[test]
fn invalid_points_are_rejected_with_reasons() {
    let err = |s: &str| match toml::from_str::<Device>(&format!("points = [{s}]")) {
        Ok(_) => panic!("accepted: {s}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err(r#"{ name = "x", table = "coil", address = 0, type = "f32" }"#)
            .contains("point `x`: type f32 cannot live in the coil table")
    );
    assert!(
        err(r#"{ name = "x", table = "input", address = 0, type = "u16", writable = true }"#)
            .contains("read-only")
    );
    assert!(
        err(r#"{ name = "x", table = "holding", address = 0, type = "bit" }"#)
            .contains("needs `bit")
    );
    assert!(
        err(r#"{ name = "x", table = "holding", address = 0, type = "bit", bit = 16 }"#)
            .contains("bit 16 out of range")
    );
    assert!(
        err(r#"{ name = "x", table = "holding", address = 0, type = "string" }"#)
            .contains("needs `length`")
    );
    assert!(
        err(r#"{ name = "x", table = "holding", address = 0, type = "u16", scale = 0 }"#)
            .contains("non-zero")
    );
    assert!(
        err(r#"{ name = "x", table = "holding", address = 65535, type = "u32" }"#)
            .contains("past 65535")
    );
    assert!(
        err(r#"{ name = "x", table = "holding", address = 0, type = "u16", scael = 2 }"#)
            .contains("unknown field")
    );
    assert!(
        err(r#"{ name = "x", table = "holding", address = 0, type = "u16", order = "ACBD" }"#)
            .contains("unknown variant")
    );
    assert!(
        err(r#"{ name = "x", table = "holding", address = 0, type = "bool", scale = 2 }"#)
            .contains("only apply to numeric")
    );
}

#[test]
fn values_convert_to_and_from_json() {
    use serde_json::json;
    assert_eq!(Value::from_json(&json!(21)), Some(Value::U64(21)));
    assert_eq!(Value::from_json(&json!(-3)), Some(Value::I64(-3)));
    assert_eq!(Value::from_json(&json!(21.5)), Some(Value::F64(21.5)));
    assert_eq!(Value::from_json(&json!(true)), Some(Value::Bool(true)));
    assert_eq!(Value::from_json(&json!(null)), None);
    assert_eq!(Value::F64(f64::NAN).to_json(), json!(null));
    assert_eq!(Value::F64(230.5).to_json(), json!(230.5));
}
